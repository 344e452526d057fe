// Write a Flashgate secret envelope (a compact JWE) with the `jose` npm package.
//
//   npm install jose
//   node flashgate-jwe.mjs FLEET_JSON REPO NAME KIND VERSION VALUE_FILE > value.jwe
//   flashgate secret put REPO/NAME --kind KIND --jwe value.jwe      (VERSION 1)
//   flashgate secret rotate REPO/NAME --jwe value.jwe               (VERSION current + 1)
//
// FLEET_JSON is the fleet's pinned descriptor (HOME/fleet/fleet.json); check its
// signature (or its fingerprint) before you trust the key in it. The JWE must be:
// alg RSA-OAEP-256, enc A256GCM, no zip, kid "flashgate:<fleet>:<epoch>" (the JWK's),
// and the private header parameter "flashgate" binding the secret's context: the
// envelope opens only as that fleet/repo/name/kind/version.
import { readFileSync } from "node:fs";
import { CompactEncrypt, importJWK } from "jose";

const [fleetJson, repo, name, kind, version, valueFile] = process.argv.slice(2);
if (!valueFile) {
  console.error("usage: flashgate-jwe.mjs FLEET_JSON REPO NAME KIND VERSION VALUE_FILE");
  process.exit(2);
}
const descriptor = JSON.parse(readFileSync(fleetJson, "utf8"));
const jwk = descriptor.public_key_jwk;
const key = await importJWK(jwk, "RSA-OAEP-256");
const jwe = await new CompactEncrypt(readFileSync(valueFile))
  .setProtectedHeader({
    alg: "RSA-OAEP-256",
    enc: "A256GCM",
    kid: jwk.kid,
    flashgate: {
      v: 1,
      fleet: descriptor.fleet,
      repo,
      name,
      kind,
      version: Number(version),
    },
  })
  .encrypt(key);
process.stdout.write(jwe + "\n");
