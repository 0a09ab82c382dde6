/* http1_req.c — the head of one HTTP/1.x request (http1_req.h). */
#include "http1_req.h"

#include <string.h>
#include <strings.h>

/* RFC 9110 §5.6.2: tchar. */
static bool tchar(uint8_t c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* A byte of an origin-form target: visible ASCII. */
static bool target_char(uint8_t c) { return c > 0x20 && c < 0x7f; }

/* A byte of a field value: visible ASCII, obs-text, SP, HTAB. */
static bool value_char(uint8_t c) { return c == ' ' || c == '\t' || (c > 0x20 && c != 0x7f); }

void bds__http1_init(bds__http1_req *r) { memset(r, 0, sizeof *r); }

/* The request line l[0..n) (no CRLF), complete or (complete false) only
 * its first n bytes. Fills r when complete. Returns false when it is not,
 * or cannot become, a valid request line. */
static bool request_line(bds__http1_req *r, const uint8_t *l, size_t n, bool complete) {
    size_t i = 0;
    while (i < n && tchar(l[i])) i++;
    if (i > BDS_HTTP1_METHOD_MAX) return false;
    if (i == n) return !complete;
    if (i == 0 || l[i] != ' ') return false;
    size_t m = i++;
    if (i == n) return !complete;
    if (l[i] != '/') return false; /* origin-form only: no "*", no absolute-form */
    size_t t = i;
    while (i < n && target_char(l[i])) i++;
    if (i == n) return !complete;
    if (l[i] != ' ') return false;
    size_t t_end = i++;
    static const char ver[] = "HTTP/1.";
    for (size_t k = 0; k < sizeof ver - 1; k++, i++) {
        if (i == n) return !complete;
        if (l[i] != (uint8_t)ver[k]) return false;
    }
    if (i == n) return !complete;
    if (l[i] != '0' && l[i] != '1') return false;
    if (++i != n) return false;
    if (!complete) return true;
    memcpy(r->method, l, m);
    r->method[m] = 0;
    r->path_off = t;
    const uint8_t *q = memchr(l + t, '?', t_end - t);
    r->path_len = (size_t)((q ? q : l + t_end) - (l + t));
    r->minor = (uint8_t)(l[n - 1] - '0');
    return true;
}

/* A header field line l[0..n) (no CRLF). */
static bool field_line(bds__http1_req *r, const uint8_t *l, size_t n) {
    size_t i = 0;
    while (i < n && tchar(l[i])) i++;
    if (i == 0 || i == n || l[i] != ':') return false; /* no name, no colon, or whitespace before it */
    if (i == 4 && strncasecmp((const char *)l, "host", 4) == 0) r->hosts++;
    for (i++; i < n; i++)
        if (!value_char(l[i])) return false;
    return true;
}

bds__http1_verdict bds__http1_parse(bds__http1_req *r, const uint8_t *buf, size_t len, size_t max) {
    size_t end = len < max ? len : max;
    while (r->pos < end) {
        const uint8_t *l = buf + r->pos;
        size_t avail = end - r->pos;
        const uint8_t *nl = memchr(l, '\n', avail);
        if (!nl) {
            /* An early verdict on a request line still arriving: a TLS or
             * HTTP/2 client is answered at once instead of at the timeout. */
            if (!r->line_done) {
                size_t n = avail;
                const uint8_t *cr = memchr(l, '\r', n);
                if (cr) n = (size_t)(cr - l); /* a CR must be the line's end: judged once it completes */
                if (!request_line(r, l, n, false)) return BDS_HTTP1_BAD;
            }
            break;
        }
        size_t n = (size_t)(nl - l);
        if (n == 0 || l[n - 1] != '\r') return BDS_HTTP1_BAD; /* a bare LF */
        n--;
        if (memchr(l, '\r', n)) return BDS_HTTP1_BAD;      /* a bare CR */
        size_t next = r->pos + n + 2;
        if (!r->line_done) {
            if (!request_line(r, l, n, true)) return BDS_HTTP1_BAD;
            r->line_done = true;
        } else if (n == 0) {
            if (r->minor == 1 && r->hosts != 1) return BDS_HTTP1_BAD;
            r->head_len = next;
            r->pos = next;
            return BDS_HTTP1_DONE;
        } else if (!field_line(r, l, n)) {
            return BDS_HTTP1_BAD;
        }
        r->pos = next;
    }
    return len >= max ? BDS_HTTP1_TOO_LARGE : BDS_HTTP1_MORE;
}
