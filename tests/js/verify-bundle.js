// The outside check: @sigstore/verify (npm, not written here) verifies an imagekit Sigstore bundle v0.3
// against a public key PEM, with no transparency log and no timestamps (a private key, offline).
//   node verify-bundle.js BUNDLE.sigstore.json KEY.pub
// Prints one JSON line {ok, hint, payloadType, subjects} and exits 0, or prints the error and exits 1.
'use strict';
const fs = require('fs');
const { bundleFromJSON } = require('@sigstore/bundle');
const { Verifier, toSignedEntity, toTrustMaterial } = require('@sigstore/verify');
const { crypto } = require('@sigstore/core');

const [bundlePath, keyPath] = process.argv.slice(2);
try {
  const bundle = bundleFromJSON(JSON.parse(fs.readFileSync(bundlePath, 'utf8')));
  const publicKey = crypto.createPublicKey(fs.readFileSync(keyPath, 'utf8'));
  const hint = bundle.verificationMaterial.content.publicKey.hint;
  const emptyRoot = { certificateAuthorities: [], timestampAuthorities: [], tlogs: [], ctlogs: [] };
  // the key is trusted under the hint the bundle names; a bundle naming another key finds none
  const keys = (h) => {
    const want = require('crypto').createHash('sha256').update(publicKey.export({ type: 'spki', format: 'der' })).digest('hex');
    if (h !== want) throw new Error(`key not found: ${h}`);
    return { publicKey, validFor: () => true };
  };
  const verifier = new Verifier(toTrustMaterial(emptyRoot, keys), {
    tlogThreshold: 0, ctlogThreshold: 0, timestampThreshold: 0,
  });
  verifier.verify(toSignedEntity(bundle));
  const statement = JSON.parse(Buffer.from(bundle.content.dsseEnvelope.payload).toString('utf8'));
  console.log(JSON.stringify({
    ok: true, hint, payloadType: bundle.content.dsseEnvelope.payloadType, subjects: statement.subject,
  }));
} catch (err) {
  console.log(JSON.stringify({ ok: false, error: String(err && err.message ? err.message : err) }));
  process.exit(1);
}
