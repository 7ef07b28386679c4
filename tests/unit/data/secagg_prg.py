#!/usr/bin/env python3
"""Known-answer vectors for the secure-aggregation PRG (docs/SECAGG.md, "PRG"), computed with
the `cryptography` package (OpenSSL underneath, but none of fleetlearn's code): ChaCha20 with
key = the 32-byte seed and the 16-byte IV of zeros (32-bit block counter 0, 96-bit nonce 0),
keystream of 4*n bytes, word i = little-endian bytes 4i..4i+3. Run it to reprint the constants
of tests/unit/test_secagg.c (prg_vector); `openssl enc -chacha20` gives the same keystream:
  head -c 80 /dev/zero | openssl enc -chacha20 -K <seed hex> -iv 00000000000000000000000000000000 | xxd -p
"""
import struct
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

def prg(seed: bytes, n: int) -> list:
    enc = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    ks = enc.update(bytes(4 * n))
    return list(struct.unpack("<%dI" % n, ks))

for name, seed in (("counting", bytes(range(32))), ("ff", b"\xff" * 32)):
    words = prg(seed, 20)  # 80 bytes: crosses one 64-byte block boundary
    print(name, seed.hex())
    print(", ".join("0x%08xu" % w for w in words))

# The pairwise derivations (HKDF-SHA256, no salt) of RFC 7748's shared secret, and one sealed
# share message (AES-256-GCM, nonce sender||receiver||0000, AD round||sender||receiver, all LE):
# the constants of test_secagg.c's derivation_and_aead_known_answers.
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

k = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
for info in (b"fleetlearn secagg v1 share key", b"fleetlearn secagg v1 mask seed"):
    print(info.decode(), HKDF(hashes.SHA256(), 32, None, info).derive(k).hex())
nonce = struct.pack("<II", 3, 7) + bytes(4)
ad = struct.pack("<QII", 42, 3, 7)
print("seal", AESGCM(bytes(range(32))).encrypt(nonce, b"fleetlearn", ad).hex())
