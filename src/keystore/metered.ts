/**
 * An OrgKeystore that times every private-key operation into dime_hsm_operation_seconds
 * (docs/metrics.md). openKeystore and createKeystore return it, so every caller (gateway, relay,
 * user store, CLI) is measured without knowing; the labels are the operation and the backend kind,
 * never a key label, a context or any bytes.
 */
import { timeHsm } from '../service-metrics.js';
import type { KeystoreSigner, OrgKeystore, SokSigner } from './keystore.js';
import type { ActorKeys } from '../dime/message/open.js';

class MeteredKeystore implements OrgKeystore {
  readonly actorKeys: ActorKeys;
  // One wrapper per signer, so that identity holds (keystore.pok === keystore.poks.at(-1)).
  private readonly signers = new WeakMap<KeystoreSigner, KeystoreSigner>();

  constructor(private readonly inner: OrgKeystore) {
    this.actorKeys = { ecdh: (publicKey) => this.ecdh(publicKey) };
  }

  get kind(): OrgKeystore['kind'] {
    return this.inner.kind;
  }
  get encryptionPublicKey(): Uint8Array {
    return this.inner.encryptionPublicKey;
  }
  // Read through each time: rotatePok and addSok change the inner lists.
  get pok(): KeystoreSigner {
    return this.metered(this.inner.pok);
  }
  get poks(): readonly KeystoreSigner[] {
    return this.inner.poks.map((s) => this.metered(s));
  }
  get soks(): readonly SokSigner[] {
    return this.inner.soks.map((s) => this.metered(s));
  }

  private metered<S extends KeystoreSigner>(s: S): S {
    let m = this.signers.get(s);
    if (!m) {
      m = { ...s, sign: (message: Uint8Array) => timeHsm('sign', this.inner.kind, () => s.sign(message)) };
      this.signers.set(s, m);
    }
    return m as S;
  }

  signer(label: string): KeystoreSigner {
    return this.metered(this.inner.signer(label));
  }
  signerFor(permission: number): KeystoreSigner {
    return this.metered(this.inner.signerFor(permission));
  }
  ecdh(publicKey: Uint8Array): Promise<Uint8Array> {
    return timeHsm('ecdh', this.inner.kind, () => this.inner.ecdh(publicKey));
  }
  wrap(plaintext: Uint8Array, context: string): Promise<Uint8Array> {
    return timeHsm('wrap', this.inner.kind, () => this.inner.wrap(plaintext, context));
  }
  unwrap(blob: Uint8Array, context: string): Promise<Uint8Array> {
    return timeHsm('unwrap', this.inner.kind, () => this.inner.unwrap(blob, context));
  }
  async rotatePok(): Promise<KeystoreSigner> {
    return this.metered(await this.inner.rotatePok());
  }
  async addSok(permissions: number): Promise<SokSigner> {
    return this.metered(await this.inner.addSok(permissions));
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

export function meteredKeystore(inner: OrgKeystore): OrgKeystore {
  return new MeteredKeystore(inner);
}
