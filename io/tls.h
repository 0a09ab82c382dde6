/* tls.h — TLS for the server's connections, with OpenSSL 3 (internal).
 *
 * The shards own the sockets and their io_uring reads and writes, so OpenSSL
 * never touches a socket. Each connection's SSL sits on a BIO pair of our
 * own: its reads take ciphertext straight from the ring buffer that
 * bds__tls_recv was handed (copied once, into OpenSSL's record buffer), and
 * its writes hand each finished record to the connection's write function,
 * which copies it into the socket's output chunks (the one copy a buffered
 * socket needs; no memory BIO in between). No thread of its own, no
 * blocking call.
 *
 * Policy: TLS 1.2 and 1.3 only; ALPN must select "h2" (a client that offers
 * ALPN without h2 gets the no_application_protocol alert; one that offers no
 * ALPN at all is refused after the handshake, bds__tls_alpn_ok); TLS 1.2 only
 * with the ECDHE AEAD suites HTTP/2 allows (RFC 9113 §9.2.2); optional client
 * certificates verified against a CA file (mTLS: required when a CA is set).
 *
 * Thread/Shard: a bds__tls belongs to its connection's shard. A bds__tls_ctx
 * is shared: made and swapped (certificate reload) under the server's lock,
 * used by bds__tls_new under the same lock; each SSL holds its own reference
 * to the SSL_CTX it was made from, so a swap never pulls one from under a
 * live connection. */
#ifndef BDS_IO_TLS_H
#define BDS_IO_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bidistream/status.h"

typedef struct bds__tls_ctx bds__tls_ctx;
typedef struct bds__tls bds__tls;

/* Makes a context from a PEM certificate chain file, its PEM private key and,
 * when client_ca is not NULL, a PEM CA file that client certificates must
 * chain to. Returns BDS_OK with *out set (free with bds__tls_ctx_free), or
 * BDS_E_INVALID with why (what failed and OpenSSL's reason) filled. */
bds_status bds__tls_ctx_new(bds__tls_ctx **out, const char *cert, const char *key, const char *client_ca, char *why,
                            size_t why_len);
/* Drops the caller's reference; connections made from it keep theirs. */
void bds__tls_ctx_free(bds__tls_ctx *ctx);

/* Queues ciphertext on the connection's socket: true when all of it was
 * queued, false when nothing was (its output queue is full, or it is
 * closing). */
typedef bool (*bds__tls_write_fn)(void *arg, const uint8_t *p, size_t n);

/* A server-side TLS session for one connection, writing through write(arg,
 * ...), or NULL (no memory). */
bds__tls *bds__tls_new(bds__tls_ctx *ctx, bds__tls_write_fn write, void *arg);
void bds__tls_free(bds__tls *t);

/* Feeds ciphertext received from the socket (read in place: in must stay
 * valid during the call only) and hands every byte of plaintext it yields to
 * plain(arg, bytes, len), which returns false to stop (its connection
 * failed). Handshake messages and alerts it answers with go out through the
 * write function. Returns BDS_OK (more input wanted, or plain stopped),
 * BDS_UNAVAILABLE (the peer closed the TLS session: close_notify) or
 * BDS_E_INVALID (the handshake or a record failed; *why says why, static or
 * thread-local storage). */
bds_status bds__tls_recv(bds__tls *t, const uint8_t *in, size_t len,
                         bool (*plain)(void *arg, const uint8_t *p, size_t n),
                         void *arg, const char **why);
/* Whether the handshake has completed. */
bool bds__tls_ready(const bds__tls *t);
/* After the handshake: whether ALPN selected h2 (false when the client
 * offered no ALPN). */
bool bds__tls_alpn_ok(const bds__tls *t);
/* Encrypts plaintext and writes the records; only once ready. *sent gets
 * how much of p went out: all of it with BDS_OK; part (maybe none) with
 * BDS_E_AGAIN, when the socket's queue is full: call again with the rest
 * once it drains (a record already made waits inside the session meanwhile;
 * the bytes passed again may sit elsewhere in memory). BDS_E_INVALID: the
 * session failed. */
bds_status bds__tls_send(bds__tls *t, const uint8_t *p, size_t n, size_t *sent);
/* Writes a close_notify alert, when the session is up. */
void bds__tls_shutdown(bds__tls *t);

#endif
