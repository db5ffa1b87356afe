/**
 * Where things live under the configured data directory (`data_dir`, docs/keystore.md):
 *
 *   <data_dir>/org.keys (+ .ring, .wrap)   the file keystore (keystore.file; not used with pkcs11)
 *   <data_dir>/signets/                     published signets with history (FileSignetStore)
 *   <data_dir>/users/<domain>/<local>/      users' custody files (UserKeyStore, users.ts)
 *   <data_dir>/tls/relay.crt, relay.key     the relay's TLS certificate made by `dime init`
 */
import * as path from 'node:path';

export interface DataLayout {
  signets: string;
  users: string;
  tls: string;
  tlsCert: string;
  tlsKey: string;
}

export function dataLayout(dataDir: string): DataLayout {
  const tls = path.join(dataDir, 'tls');
  return {
    signets: path.join(dataDir, 'signets'),
    users: path.join(dataDir, 'users'),
    tls,
    tlsCert: path.join(tls, 'relay.crt'),
    tlsKey: path.join(tls, 'relay.key'),
  };
}
