/* fleet_wire.h: what agent_load.c, fleet_sim.c and fleet_sub.c share of
 * speaking the agent protocol (docs/PROTOCOL.md): the length-prefixed
 * framing, a growable byte buffer, a bump arena for protobuf-c unpack, the
 * TCP hello's HMAC and the dialler's answer to a CHALLENGE (section 3), and
 * the key file. Header-only (static inline)
 * so each program stays one compile command. */
#ifndef FLEET_WIRE_H
#define FLEET_WIRE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include "agent.pb-c.h"
#include "controller.pb-c.h"

typedef Containers__Lmctfy__Agent__Frame Frame;
typedef Containers__Lmctfy__Agent__Hello Hello;
#define K(x) CONTAINERS__LMCTFY__AGENT__FRAME_KIND__FRAME_##x
#define S(x) CONTAINERS__LMCTFY__AGENT__HELLO_STAGE__HELLO_##x

#define HELLO_MAX_FRAME 65536u /* before the handshake (PROTOCOL.md section 1) */
#define NONCE 32
#define MAC_LEN 32

static inline uint32_t get_be32(const char *p) {
    const unsigned char *u = (const unsigned char *)p;
    return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | (uint32_t)u[3];
}

static inline void put_be32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24); p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8); p[3] = (unsigned char)v;
}

static inline void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n);
    if (!q && n) { perror("realloc"); exit(3); }
    return q;
}

typedef struct { char *p; size_t len, cap; } buf_t;

static inline char *buf_reserve(buf_t *b, size_t extra) {
    if (b->len + extra > b->cap) {
        size_t c = b->cap ? b->cap : 256;
        while (c < b->len + extra) c *= 2;
        b->p = xrealloc(b->p, c);
        b->cap = c;
    }
    return b->p + b->len;
}

static inline void buf_free(buf_t *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

static inline uint64_t realtime_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline uint64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- a bump arena for protobuf-c unpack: reset before every frame ---- */

static unsigned char *fw_arena;
static size_t fw_arena_cap, fw_arena_used;
static void **fw_spill; /* allocations that did not fit, freed at reset */
static size_t fw_nspill, fw_capspill;

static inline void *fw_arena_alloc(void *d, size_t n) {
    (void)d;
    n = (n + 15) & ~(size_t)15;
    if (fw_arena_used + n <= fw_arena_cap) {
        void *p = fw_arena + fw_arena_used;
        fw_arena_used += n;
        return p;
    }
    if (fw_nspill == fw_capspill) {
        fw_capspill = fw_capspill ? fw_capspill * 2 : 16;
        fw_spill = xrealloc(fw_spill, fw_capspill * sizeof *fw_spill);
    }
    void *p = malloc(n);
    if (!p) { perror("malloc"); exit(3); }
    return fw_spill[fw_nspill++] = p;
}

static inline void fw_arena_free(void *d, void *p) { (void)d; (void)p; }

static inline void arena_reset(void) {
    if (!fw_arena) {
        fw_arena_cap = 1 << 20;
        fw_arena = aligned_alloc(16, fw_arena_cap);
        if (!fw_arena) { perror("aligned_alloc"); exit(3); }
    }
    fw_arena_used = 0;
    while (fw_nspill) free(fw_spill[--fw_nspill]);
}

static ProtobufCAllocator arena_allocator = {fw_arena_alloc, fw_arena_free, NULL};

/* ---- frames ---- */

/* Appends one length-prefixed Frame to out; returns the body's length. */
static inline size_t append_frame(buf_t *out, const Frame *f) {
    size_t n = containers__lmctfy__agent__frame__get_packed_size(f);
    unsigned char *o = (unsigned char *)buf_reserve(out, 4 + n);
    put_be32(o, (uint32_t)n);
    containers__lmctfy__agent__frame__pack(f, o + 4);
    out->len += 4 + n;
    return n;
}

static inline void append_hello(buf_t *out, Hello *h) {
    Frame f = CONTAINERS__LMCTFY__AGENT__FRAME__INIT;
    f.has_kind = 1; f.kind = K(HELLO);
    f.has_stream_id = 1; f.stream_id = 0;
    f.hello = h;
    append_frame(out, &f);
}

/* A frame carrying `payload` on `stream` (RESPONSE, STATUS, REQUEST...). */
static inline void append_simple(buf_t *out, int kind, uint32_t stream, const uint8_t *payload, size_t plen) {
    Frame f = CONTAINERS__LMCTFY__AGENT__FRAME__INIT;
    f.has_kind = 1; f.kind = kind;
    f.has_stream_id = 1; f.stream_id = stream;
    if (payload) { f.has_payload = 1; f.payload.data = (uint8_t *)payload; f.payload.len = plen; }
    append_frame(out, &f);
}

static inline void append_status(buf_t *out, uint32_t stream, int code, const char *message) {
    Containers__Lmctfy__Agent__RpcStatus st = CONTAINERS__LMCTFY__AGENT__RPC_STATUS__INIT;
    st.has_code = 1; st.code = code;
    st.message = (char *)message;
    Frame f = CONTAINERS__LMCTFY__AGENT__FRAME__INIT;
    f.has_kind = 1; f.kind = K(STATUS);
    f.has_stream_id = 1; f.stream_id = stream;
    f.status = &st;
    append_frame(out, &f);
}

/* A GOAWAY_NORMAL with no stream taken: the dialler's goodbye. */
static inline void append_goaway(buf_t *out) {
    Containers__Lmctfy__Agent__GoAway g = CONTAINERS__LMCTFY__AGENT__GO_AWAY__INIT;
    g.has_reason = 1; g.reason = CONTAINERS__LMCTFY__AGENT__GO_AWAY_REASON__GOAWAY_NORMAL;
    g.has_last_stream_id = 1; g.last_stream_id = 0;
    Frame f = CONTAINERS__LMCTFY__AGENT__FRAME__INIT;
    f.has_kind = 1; f.kind = K(GOAWAY);
    f.has_stream_id = 1; f.stream_id = 0;
    f.goaway = &g;
    append_frame(out, &f);
}

static inline void append_credit(buf_t *out, uint32_t stream, uint32_t credit) {
    Frame f = CONTAINERS__LMCTFY__AGENT__FRAME__INIT;
    f.has_kind = 1; f.kind = K(CREDIT);
    f.has_stream_id = 1; f.stream_id = stream;
    f.has_credit = 1; f.credit = credit;
    append_frame(out, &f);
}

/* ---- the TCP hello's MAC (PROTOCOL.md section 3) ---- */

static inline void mac(const unsigned char *k, size_t klen, const char *label, uint32_t version, const char *kid,
                       const unsigned char *nc, const unsigned char *ns, unsigned char out[MAC_LEN]) {
    unsigned char msg[512];
    size_t ll = strlen(label), kl = strlen(kid), n = 0;
    if (ll + 7 + kl + 2 * NONCE > sizeof msg) { fprintf(stderr, "key id too long\n"); exit(2); }
    memcpy(msg, label, ll); n += ll;
    msg[n++] = 0;
    put_be32(msg + n, version); n += 4;
    msg[n++] = (unsigned char)(kl >> 8); msg[n++] = (unsigned char)kl;
    memcpy(msg + n, kid, kl); n += kl;
    memcpy(msg + n, nc, NONCE); n += NONCE;
    memcpy(msg + n, ns, NONCE); n += NONCE;
    unsigned int olen = MAC_LEN;
    if (!HMAC(EVP_sha256(), k, (int)klen, msg, n, out, &olen) || olen != MAC_LEN) {
        fprintf(stderr, "HMAC failed\n");
        exit(3);
    }
}

/* The dialler's answer to the acceptor's CHALLENGE h (PROTOCOL.md section
 * 3), on a connection that offered nonce nc and versions lo-hi: checks the
 * version, that the acceptor's nonce is fresh and its proof is right, then
 * appends our PROOF to out. Returns the version agreed, or 0 with what was
 * wrong in err (peer: who sent h, for the message). */
static inline uint32_t answer_challenge(const Hello *h, const unsigned char nc[NONCE], uint32_t lo, uint32_t hi,
                                        const unsigned char *key, size_t key_len, const char *key_id,
                                        const char *peer, buf_t *out, char *err, size_t errlen) {
    if (!h->has_version || h->version < lo || h->version > hi) {
        snprintf(err, errlen, "CHALLENGE names version %u, outside %u-%u", h->version, lo, hi);
        return 0;
    }
    if (!h->has_nonce || h->nonce.len != NONCE || !memcmp(h->nonce.data, nc, NONCE) ||
        !h->has_proof || h->proof.len != MAC_LEN) {
        snprintf(err, errlen, "CHALLENGE without a fresh 32-byte nonce and a 32-byte proof");
        return 0;
    }
    unsigned char want[MAC_LEN], proof[MAC_LEN];
    mac(key, key_len, "lmctfy-v1 acceptor", h->version, key_id, nc, h->nonce.data, want);
    if (CRYPTO_memcmp(want, h->proof.data, MAC_LEN)) {
        snprintf(err, errlen, "the %s's proof is wrong (not the same key?)", peer);
        return 0;
    }
    mac(key, key_len, "lmctfy-v1 dialler", h->version, key_id, nc, h->nonce.data, proof);
    Hello p = CONTAINERS__LMCTFY__AGENT__HELLO__INIT;
    p.has_stage = 1; p.stage = S(PROOF);
    p.has_proof = 1; p.proof.data = proof; p.proof.len = MAC_LEN;
    append_hello(out, &p);
    return h->version;
}

/* "key_id base64-key" lines, '#' comments (KeyFile.swift): the key named
 * *key_id, or the first one (then *key_id is set to its id). */
static inline size_t load_key(const char *key_file, const char **key_id, unsigned char *key, size_t cap) {
    FILE *f = fopen(key_file, "r");
    if (!f) { perror(key_file); exit(2); }
    char line[1024];
    size_t len = 0;
    while (!len && fgets(line, sizeof line, f)) {
        char *hash = strchr(line, '#');
        if (hash) *hash = 0;
        char id[256], b64[512];
        if (sscanf(line, "%255s %511s", id, b64) != 2) continue;
        if (*key_id && strcmp(id, *key_id)) continue;
        size_t bl = strlen(b64);
        unsigned char dec[512];
        int n = bl % 4 ? -1 : EVP_DecodeBlock(dec, (const unsigned char *)b64, (int)bl);
        if (n < 0) { fprintf(stderr, "%s: key %s is not base64\n", key_file, id); exit(2); }
        while (bl && b64[bl - 1] == '=') { bl--; n--; }
        if (n < 16 || (size_t)n > cap) { fprintf(stderr, "%s: key %s: bad length\n", key_file, id); exit(2); }
        memcpy(key, dec, (size_t)n);
        len = (size_t)n;
        if (!*key_id) *key_id = strdup(id);
    }
    fclose(f);
    if (!len) { fprintf(stderr, "%s: no key%s%s\n", key_file, *key_id ? " " : "", *key_id ? *key_id : ""); exit(2); }
    return len;
}

static inline int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

#endif
