/* What OpenSSL 3 alone keeps resident in a process that does what the idle agent does with
 * it: initialise libssl, make a TLS client context, sign once with Ed25519. Prints the
 * process's resident KiB by mapping (bench/tls-floor). */
#include <openssl/evp.h>
#include <openssl/ssl.h>

#include "floor_report.h"

int main(void) {
  floor_report("start");
  OPENSSL_init_ssl(0, NULL);
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  EVP_PKEY* key = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  unsigned char sig[64];
  size_t sig_len = sizeof sig;
  if (!ctx || !key || !md || EVP_DigestSignInit(md, NULL, NULL, NULL, key) != 1 ||
      EVP_DigestSign(md, sig, &sig_len, (const unsigned char*)"x", 1) != 1)
    return 2;
  floor_report("TLS client context + one Ed25519 signature");
  return 0;
}
