package secret

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"errors"
)

// Seal encrypts a secret so that only a holder of key can read it back:
// AES-256-GCM under a key derived by HKDF-SHA256 from key, bound to
// context. tokend uses it to answer an idempotent retry of a create with
// the same secret, keyed by the client's Idempotency-Key, which tokend
// never stores; the database holds only ciphertext.
func Seal(sec, key, context string) ([]byte, error) {
	aead, err := sealer(key, context)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(sec)+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return aead.Seal(nonce, nonce, []byte(sec), []byte(context)), nil
}

// Open reverses Seal.
func Open(sealed []byte, key, context string) (string, error) {
	aead, err := sealer(key, context)
	if err != nil {
		return "", err
	}
	if len(sealed) < aead.NonceSize() {
		return "", errors.New("sealed secret too short")
	}
	plain, err := aead.Open(nil, sealed[:aead.NonceSize()], sealed[aead.NonceSize():], []byte(context))
	if err != nil {
		return "", errors.New("sealed secret does not open with this key")
	}
	return string(plain), nil
}

func sealer(key, context string) (cipher.AEAD, error) {
	k, err := hkdf.Key(sha256.New, []byte(key), []byte("tokend seal v1"), context, 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}
