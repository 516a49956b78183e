/* The same as floor_openssl.c with wolfSSL (Debian's libwolfssl, built with Ed25519, TLS 1.3
 * and its OpenSSL compatibility layer). */
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/ed25519.h>
#include <wolfssl/wolfcrypt/random.h>

#include "floor_report.h"

int main(void) {
  floor_report("start");
  wolfSSL_Init();
  WOLFSSL_CTX* ctx = wolfSSL_CTX_new(wolfTLS_client_method());
  WC_RNG rng;
  ed25519_key key;
  byte sig[ED25519_SIG_SIZE];
  word32 sig_len = sizeof sig;
  if (!ctx || wc_InitRng(&rng) != 0 || wc_ed25519_init(&key) != 0 ||
      wc_ed25519_make_key(&rng, ED25519_KEY_SIZE, &key) != 0 ||
      wc_ed25519_sign_msg((const byte*)"x", 1, sig, &sig_len, &key) != 0)
    return 2;
  floor_report("TLS client context + one Ed25519 signature");
  return 0;
}
