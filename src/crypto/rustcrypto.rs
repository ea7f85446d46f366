//! The `rustcrypto` backend: aes-gcm, p256, p384, p521, k256, rsa, hmac, sha2.
