/* tls.c — see tls.h. OpenSSL 3 over a BIO of our own: reads come from the
 * slice of received bytes, writes go to the connection's write function. */
#include "tls.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base.h"

struct bds__tls_ctx {
    SSL_CTX *ssl;
};

struct bds__tls {
    SSL *ssl;
    bds__tls_write_fn write;
    void *arg;
    const uint8_t *in;     /* bds__tls_recv's ciphertext not read yet */
    size_t in_len;
    bool failed;
};

/* ---- the BIO between OpenSSL and the connection ------------------------------------- */

static BIO_METHOD *tls_bio_method;
static pthread_once_t tls_bio_once = PTHREAD_ONCE_INIT;

static int tls_bio_write(BIO *b, const char *p, int n) {
    bds__tls *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (n <= 0) return 0;
    if (t->write(t->arg, (const uint8_t *)p, (size_t)n)) return n;
    BIO_set_retry_write(b); /* the socket's queue is full: the record waits in the session */
    return -1;
}

static int tls_bio_read(BIO *b, char *p, int n) {
    bds__tls *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (t->in_len == 0) {
        BIO_set_retry_read(b); /* more comes with the next receive */
        return -1;
    }
    size_t k = n > 0 && (size_t)n < t->in_len ? (size_t)n : t->in_len;
    memcpy(p, t->in, k);
    t->in += k;
    t->in_len -= k;
    return (int)k;
}

static long tls_bio_ctrl(BIO *b, int cmd, long num, void *ptr) {
    (void)b, (void)num, (void)ptr;
    return cmd == BIO_CTRL_FLUSH; /* every write is queued whole or not at all: nothing to flush */
}

static int tls_bio_create(BIO *b) {
    BIO_set_init(b, 1);
    return 1;
}

static void tls_bio_make(void) {
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "bidistream connection");
    if (m && BIO_meth_set_write(m, tls_bio_write) && BIO_meth_set_read(m, tls_bio_read) &&
        BIO_meth_set_ctrl(m, tls_bio_ctrl) && BIO_meth_set_create(m, tls_bio_create)) {
        tls_bio_method = m;
    } else {
        BIO_meth_free(m);
    }
}

/* OpenSSL's first queued error as text, and the queue emptied (a later call
 * on this thread must not read an old error as its own). */
static void tls_reason(char *buf, size_t cap) {
    unsigned long e = ERR_get_error();
    if (e) ERR_error_string_n(e, buf, cap);
    else snprintf(buf, cap, "no reason given");
    ERR_clear_error();
}

/* ALPN: h2 or nothing. */
static int tls_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                           unsigned int inlen, void *arg) {
    (void)ssl, (void)arg;
    static const unsigned char h2[] = {2, 'h', '2'};
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, h2, sizeof h2, in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL; /* no_application_protocol */
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

bds_status bds__tls_ctx_new(bds__tls_ctx **out, const char *cert, const char *key, const char *client_ca, char *why,
                            size_t why_len) {
    *out = NULL;
    char reason[200];
    const char *step = NULL;
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) step = "SSL_CTX_new";
    if (!step && !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)) step = "TLS 1.2 minimum";
    /* HTTP/2 over TLS 1.2: ephemeral key exchange and AEAD ciphers only. */
    if (!step && !SSL_CTX_set_cipher_list(ctx, "ECDHE+AESGCM:ECDHE+CHACHA20")) step = "cipher list";
    if (!step && SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) step = "certificate chain";
    if (!step && SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) step = "private key";
    if (!step && SSL_CTX_check_private_key(ctx) != 1) step = "private key does not match the certificate";
    if (!step && client_ca) {
        if (SSL_CTX_load_verify_locations(ctx, client_ca, NULL) != 1) step = "client CA file";
        else SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    if (step) {
        tls_reason(reason, sizeof reason);
        snprintf(why, why_len, "TLS: %s: %s", step, reason);
        SSL_CTX_free(ctx);
        return BDS_E_INVALID;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_alpn_select_cb(ctx, tls_alpn_select, NULL);
    /* A write the socket cannot take yet is taken again from wherever the
     * HTTP/2 output then sits, record by record; idle connections give their
     * record buffers back. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    bds__tls_ctx *c = malloc(sizeof *c);
    if (!c) {
        SSL_CTX_free(ctx);
        snprintf(why, why_len, "TLS: out of memory");
        return BDS_E_INVALID;
    }
    c->ssl = ctx;
    *out = c;
    return BDS_OK;
}

void bds__tls_ctx_free(bds__tls_ctx *ctx) {
    if (!ctx) return;
    SSL_CTX_free(ctx->ssl);
    free(ctx);
}

bds__tls *bds__tls_new(bds__tls_ctx *ctx, bds__tls_write_fn write, void *arg) {
    pthread_once(&tls_bio_once, tls_bio_make);
    if (!tls_bio_method) return NULL;
    bds__tls *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->write = write;
    t->arg = arg;
    t->ssl = SSL_new(ctx->ssl);
    BIO *b = BIO_new(tls_bio_method);
    if (!t->ssl || !b) {
        SSL_free(t->ssl);
        BIO_free(b);
        free(t);
        ERR_clear_error();
        return NULL;
    }
    BIO_set_data(b, t);
    SSL_set_bio(t->ssl, b, b); /* one BIO both ways: the session owns it */
    SSL_set_accept_state(t->ssl);
    return t;
}

void bds__tls_free(bds__tls *t) {
    if (!t) return;
    SSL_free(t->ssl); /* and its BIO */
    free(t);
}

bool bds__tls_ready(const bds__tls *t) { return SSL_is_init_finished(t->ssl); }

bool bds__tls_alpn_ok(const bds__tls *t) {
    const unsigned char *p;
    unsigned int n;
    SSL_get0_alpn_selected(t->ssl, &p, &n);
    return n == 2 && memcmp(p, "h2", 2) == 0;
}

bds_status bds__tls_recv(bds__tls *t, const uint8_t *in, size_t len,
                         bool (*plain)(void *arg, const uint8_t *p, size_t n),
                         void *arg, const char **why) {
    static _Thread_local char reason[200];
    *why = NULL;
    if (t->failed) return BDS_E_INVALID;
    t->in = in;
    t->in_len = len;
    for (;;) {
        uint8_t buf[16384]; /* one TLS record's plaintext at most */
        ERR_clear_error();
        int n = SSL_read(t->ssl, buf, sizeof buf);
        if (n > 0) {
            if (!plain(arg, buf, (size_t)n)) break;
            continue;
        }
        int e = SSL_get_error(t->ssl, n);
        /* All of the input is in the session (a record's start may wait
         * there for its end): the slice is the caller's again. */
        t->in = NULL;
        t->in_len = 0;
        if (e == SSL_ERROR_WANT_READ) return BDS_OK;
        if (e == SSL_ERROR_ZERO_RETURN) return BDS_UNAVAILABLE;
        t->failed = true;
        if (e == SSL_ERROR_WANT_WRITE) {
            *why = "the socket's output is full during the handshake";
            ERR_clear_error();
        } else {
            tls_reason(reason, sizeof reason);
            *why = reason;
        }
        return BDS_E_INVALID;
    }
    t->in = NULL; /* plain stopped: the connection is failing, the rest is dropped */
    t->in_len = 0;
    return BDS_OK;
}

bds_status bds__tls_send(bds__tls *t, const uint8_t *p, size_t n, size_t *sent) {
    BDS_ASSERT(bds__tls_ready(t));
    *sent = 0;
    while (*sent < n) {
        if (t->failed) return BDS_E_INVALID;
        size_t left = n - *sent;
        ERR_clear_error();
        int w = SSL_write(t->ssl, p + *sent, left > INT32_MAX ? INT32_MAX : (int)left);
        if (w > 0) {
            *sent += (size_t)w;
            continue;
        }
        int e = SSL_get_error(t->ssl, w);
        ERR_clear_error();
        if (e == SSL_ERROR_WANT_WRITE) return BDS_E_AGAIN;
        t->failed = true;
        return BDS_E_INVALID;
    }
    return BDS_OK;
}

void bds__tls_shutdown(bds__tls *t) {
    if (t->failed || !bds__tls_ready(t)) return;
    ERR_clear_error();
    (void)SSL_shutdown(t->ssl);
    ERR_clear_error();
}
