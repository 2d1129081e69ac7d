/* Debian's OpenSSL libcrypto (libssl-dev): HMAC-SHA256, constant-time
 * comparison and the CSPRNG for the RPC handshake. Only what LmctfyRPC uses. */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
