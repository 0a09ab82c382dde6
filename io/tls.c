/* tls.c — see tls.h. OpenSSL 3 over memory BIOs. */
#include "tls.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base.h"

struct bds__tls_ctx {
    SSL_CTX *ssl;
};

struct bds__tls {
    SSL *ssl;
    BIO *in, *out; /* owned by ssl */
    bool failed;
};

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
    /* Idle connections give their record buffers back. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
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

bds__tls *bds__tls_new(bds__tls_ctx *ctx) {
    bds__tls *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->ssl = SSL_new(ctx->ssl);
    t->in = BIO_new(BIO_s_mem());
    t->out = BIO_new(BIO_s_mem());
    if (!t->ssl || !t->in || !t->out) {
        SSL_free(t->ssl);
        BIO_free(t->in);
        BIO_free(t->out);
        free(t);
        ERR_clear_error();
        return NULL;
    }
    /* An empty input BIO means "wait for more", not EOF. */
    BIO_set_mem_eof_return(t->in, -1);
    SSL_set_bio(t->ssl, t->in, t->out);
    SSL_set_accept_state(t->ssl);
    return t;
}

void bds__tls_free(bds__tls *t) {
    if (!t) return;
    SSL_free(t->ssl); /* and its BIOs */
    free(t);
}

bool bds__tls_ready(const bds__tls *t) { return SSL_is_init_finished(t->ssl); }

bool bds__tls_alpn_ok(const bds__tls *t) {
    const unsigned char *p;
    unsigned int n;
    SSL_get0_alpn_selected(t->ssl, &p, &n);
    return n == 2 && memcmp(p, "h2", 2) == 0;
}

bds_status bds__tls_recv(bds__tls *t, const uint8_t *in, size_t len, bool (*plain)(void *arg, const uint8_t *p, size_t n),
                         void *arg, const char **why) {
    static _Thread_local char reason[200];
    *why = NULL;
    if (t->failed) return BDS_E_INVALID;
    if (len && BIO_write(t->in, in, (int)len) != (int)len) {
        *why = "TLS: out of memory";
        t->failed = true;
        return BDS_E_INVALID;
    }
    for (;;) {
        uint8_t buf[16384]; /* one TLS record's plaintext at most */
        ERR_clear_error();
        int n = SSL_read(t->ssl, buf, sizeof buf);
        if (n > 0) {
            if (!plain(arg, buf, (size_t)n)) return BDS_OK;
            continue;
        }
        int e = SSL_get_error(t->ssl, n);
        if (e == SSL_ERROR_WANT_READ) return BDS_OK;
        if (e == SSL_ERROR_ZERO_RETURN) return BDS_UNAVAILABLE;
        t->failed = true;
        tls_reason(reason, sizeof reason);
        *why = reason;
        return BDS_E_INVALID;
    }
}

bds_status bds__tls_send(bds__tls *t, const uint8_t *p, size_t n) {
    BDS_ASSERT(bds__tls_ready(t));
    while (n > 0 && !t->failed) {
        ERR_clear_error();
        int w = SSL_write(t->ssl, p, n > INT32_MAX ? INT32_MAX : (int)n);
        if (w <= 0) {
            t->failed = true;
            ERR_clear_error();
            return BDS_E_INVALID;
        }
        p += w;
        n -= (size_t)w;
    }
    return t->failed ? BDS_E_INVALID : BDS_OK;
}

size_t bds__tls_pending(bds__tls *t, const uint8_t **p) {
    char *data = NULL;
    long n = BIO_get_mem_data(t->out, &data);
    *p = (const uint8_t *)data;
    return n > 0 ? (size_t)n : 0;
}

void bds__tls_consume(bds__tls *t) { (void)BIO_reset(t->out); }

void bds__tls_shutdown(bds__tls *t) {
    if (t->failed || !bds__tls_ready(t)) return;
    ERR_clear_error();
    (void)SSL_shutdown(t->ssl);
    ERR_clear_error();
}
