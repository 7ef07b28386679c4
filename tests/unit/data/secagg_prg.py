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
