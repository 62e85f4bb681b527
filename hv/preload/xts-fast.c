/*
 * Fused XTS-AES for libisthmus-xts (x86-64): tweaks, XOR and AES in one
 * pass over the caller's data, with the round keys read in place from the
 * cipher context QEMU passes (no copy of them is made or kept).
 *
 * nettle's XTS gets an opaque cipher function f and context ctx. For AES,
 * nettle's contexts are public structs holding the expanded round keys
 * (struct aes{128,192,256}_ctx { uint32_t keys[4 * (rounds + 1)]; }, the
 * decryption keys already in the "equivalent inverse cipher" form AESDEC
 * wants), and QEMU's own wrappers pass an array of two of them (encrypt,
 * decrypt). This file does not trust any of that: the first time a thread
 * meets a (f, ctx) pair it computes one block with f itself and with its own
 * AES-NI on a few candidate layouts (AES-128/192/256 at ctx, or at ctx + one
 * context for QEMU's decrypt wrapper); only a candidate whose block equals
 * f's (a wrong key matching is a 2^-128 event) is used, for that call and,
 * remembered per thread, for the pair's later calls (f is code reading its
 * round keys from a fixed place in ctx, so the pair keeps its layout; the
 * tweak key's pair likewise, so T0 is computed here too). Every block of a
 * message, the first one included, goes through the vector loop: a 512-byte
 * sector is two 16-block VAES iterations. Anything else (Serpent, Twofish,
 * another layout, a CPU without AES-NI) returns 0 and the caller uses the
 * generic batched path through f.
 *
 * Tiers, picked once per process by CPU (runtime detection):
 *   vaes    AVX-512 VAES + VPCLMULQDQ: 16 blocks per iteration in four zmm,
 *           tweaks advanced four lanes at a time by carry-less multiply;
 *   aesni   AES-NI + PCLMULQDQ on xmm: 8 blocks per iteration;
 *   generic none of this (the caller's batched path through f).
 * ISTHMUS_XTS_TIER=generic|aesni|vaes forces a lower tier (tests compare
 * every tier against nettle; a tier the CPU lacks is never used).
 */
#include "xts-fast.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 16

#if !defined(__x86_64__)
/* Other architectures: the generic batched path only. */
int isthmus_xts_fast(const void *ctx, nettle_cipher_func *f, int decrypt, const uint8_t t0[BLOCK], size_t length,
                     uint8_t *dst, const uint8_t *src)
{
    (void)ctx, (void)f, (void)decrypt, (void)t0, (void)length, (void)dst, (void)src;
    return 0;
}

const char *isthmus_xts_fast_tier(void)
{
    return "generic";
}

void isthmus_xts_tweak(const void *ctx, nettle_cipher_func *f, const uint8_t iv[BLOCK], uint8_t t0[BLOCK])
{
    f(ctx, BLOCK, t0, iv);
}
#else
#include <immintrin.h>

enum tier { TIER_GENERIC = 0, TIER_AESNI = 1, TIER_VAES = 2 };

static enum tier tier_of_cpu(void)
{
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("aes") || !__builtin_cpu_supports("pclmul") || !__builtin_cpu_supports("sse4.1")) {
        return TIER_GENERIC;
    }
    if (__builtin_cpu_supports("vaes") && __builtin_cpu_supports("vpclmulqdq") && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512vl")) {
        return TIER_VAES;
    }
    return TIER_AESNI;
}

static int tier_cached = -1;

static enum tier tier(void)
{
    int t = __atomic_load_n(&tier_cached, __ATOMIC_RELAXED);
    if (t < 0) {
        t = (int)tier_of_cpu();
        const char *force = getenv("ISTHMUS_XTS_TIER");
        if (force != NULL) {
            int want = strcmp(force, "generic") == 0 ? TIER_GENERIC : strcmp(force, "aesni") == 0 ? TIER_AESNI : t;
            if (want < t) {
                t = want;
            }
        }
        __atomic_store_n(&tier_cached, t, __ATOMIC_RELAXED);
    }
    return (enum tier)t;
}

const char *isthmus_xts_fast_tier(void)
{
    static const char *const names[] = {"generic", "aesni", "vaes"};
    return names[tier()];
}

/* ---- one block, AES-NI, keys loaded from the caller's context ---- */

__attribute__((target("aes,sse4.1"))) static __m128i enc1(const uint8_t *k, int nr, __m128i b)
{
    b = _mm_xor_si128(b, _mm_loadu_si128((const __m128i *)k));
    for (int i = 1; i < nr; i++) {
        b = _mm_aesenc_si128(b, _mm_loadu_si128((const __m128i *)(k + 16 * i)));
    }
    return _mm_aesenclast_si128(b, _mm_loadu_si128((const __m128i *)(k + 16 * nr)));
}

__attribute__((target("aes,sse4.1"))) static __m128i dec1(const uint8_t *k, int nr, __m128i b)
{
    b = _mm_xor_si128(b, _mm_loadu_si128((const __m128i *)k));
    for (int i = 1; i < nr; i++) {
        b = _mm_aesdec_si128(b, _mm_loadu_si128((const __m128i *)(k + 16 * i)));
    }
    return _mm_aesdeclast_si128(b, _mm_loadu_si128((const __m128i *)(k + 16 * nr)));
}

/* T * x in GF(2^128), IEEE 1619 little-endian (nettle's xts_shift). */
__attribute__((target("pclmul,sse4.1"))) static __m128i mulx1(__m128i t)
{
    __m128i c = _mm_srli_epi64(t, 63);
    __m128i r = _mm_slli_epi64(t, 1);
    r = _mm_xor_si128(r, _mm_slli_si128(c, 8));
    return _mm_xor_si128(r, _mm_clmulepi64_si128(c, _mm_set_epi64x(0, 0x87), 0x01));
}

/* T * x^8 in each 128-bit lane. */
__attribute__((target("pclmul,sse4.1"))) static __m128i mulx8(__m128i t)
{
    __m128i c = _mm_srli_epi64(t, 56);
    __m128i r = _mm_slli_epi64(t, 8);
    r = _mm_xor_si128(r, _mm_slli_si128(c, 8));
    return _mm_xor_si128(r, _mm_clmulepi64_si128(c, _mm_set_epi64x(0, 0x87), 0x01));
}

/* ---- aesni tier: 8 blocks per iteration ---- */

#define AESNI_ROUNDS(OP, OPLAST)                                                                                        \
    do {                                                                                                               \
        __m128i k = _mm_loadu_si128((const __m128i *)keys);                                                            \
        _Pragma("GCC unroll 8")                                                                                        \
        for (int j = 0; j < 8; j++) {                                                                                  \
            b[j] = _mm_xor_si128(b[j], k);                                                                             \
        }                                                                                                              \
        for (int i = 1; i < nr; i++) {                                                                                 \
            k = _mm_loadu_si128((const __m128i *)(keys + 16 * i));                                                     \
            _Pragma("GCC unroll 8")                                                                                    \
            for (int j = 0; j < 8; j++) {                                                                              \
                b[j] = OP(b[j], k);                                                                                    \
            }                                                                                                          \
        }                                                                                                              \
        k = _mm_loadu_si128((const __m128i *)(keys + 16 * nr));                                                        \
        _Pragma("GCC unroll 8")                                                                                        \
        for (int j = 0; j < 8; j++) {                                                                                  \
            b[j] = OPLAST(b[j], k);                                                                                    \
        }                                                                                                              \
    } while (0)

__attribute__((target("aes,pclmul,sse4.1"))) static void xts_aesni(const uint8_t *keys, int nr, int decrypt, __m128i t,
                                                                  size_t n, uint8_t *dst, const uint8_t *src)
{
    while (n >= 8) {
        __m128i tw[8], b[8];
        tw[0] = t;
        _Pragma("GCC unroll 8")
        for (int j = 1; j < 8; j++) {
            tw[j] = mulx1(tw[j - 1]);
        }
        _Pragma("GCC unroll 8")
        for (int j = 0; j < 8; j++) {
            b[j] = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(src + 16 * j)), tw[j]);
        }
        if (decrypt) {
            AESNI_ROUNDS(_mm_aesdec_si128, _mm_aesdeclast_si128);
        } else {
            AESNI_ROUNDS(_mm_aesenc_si128, _mm_aesenclast_si128);
        }
        _Pragma("GCC unroll 8")
        for (int j = 0; j < 8; j++) {
            _mm_storeu_si128((__m128i *)(dst + 16 * j), _mm_xor_si128(b[j], tw[j]));
        }
        t = mulx8(t);
        n -= 8;
        src += 8 * BLOCK;
        dst += 8 * BLOCK;
    }
    for (; n > 0; n--) {
        __m128i b = _mm_xor_si128(_mm_loadu_si128((const __m128i *)src), t);
        b = decrypt ? dec1(keys, nr, b) : enc1(keys, nr, b);
        _mm_storeu_si128((__m128i *)dst, _mm_xor_si128(b, t));
        t = mulx1(t);
        src += BLOCK;
        dst += BLOCK;
    }
}

/* ---- vaes tier: 16 blocks (four zmm of four) per iteration ---- */

#define VAES_TARGET __attribute__((target("aes,pclmul,sse4.1,avx2,avx512f,avx512vl,vaes,vpclmulqdq")))

/* Each 128-bit lane times x^K (0 < K < 57). */
#define MULX_LANES(v, K)                                                                                                \
    ({                                                                                                                 \
        __m512i c_ = _mm512_srli_epi64((v), 64 - (K));                                                                 \
        __m512i r_ = _mm512_slli_epi64((v), (K));                                                                      \
        r_ = _mm512_xor_si512(r_, _mm512_unpacklo_epi64(_mm512_setzero_si512(), c_));                                                   \
        _mm512_xor_si512(r_, _mm512_clmulepi64_epi128(c_, poly, 0x01));                                                \
    })

#define VAES_ROUNDS(OP, OPLAST, NB)                                                                                     \
    do {                                                                                                               \
        __m512i k = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)keys));                                    \
        _Pragma("GCC unroll 8")                                                                                        \
        for (int j = 0; j < (NB); j++) {                                                                               \
            b[j] = _mm512_xor_si512(b[j], k);                                                                          \
        }                                                                                                              \
        for (int i = 1; i < nr; i++) {                                                                                 \
            k = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(keys + 16 * i)));                             \
            _Pragma("GCC unroll 8")                                                                                    \
            for (int j = 0; j < (NB); j++) {                                                                           \
                b[j] = OP(b[j], k);                                                                                    \
            }                                                                                                          \
        }                                                                                                              \
        k = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(keys + 16 * nr)));                                \
        _Pragma("GCC unroll 8")                                                                                        \
        for (int j = 0; j < (NB); j++) {                                                                               \
            b[j] = OPLAST(b[j], k);                                                                                    \
        }                                                                                                              \
    } while (0)

VAES_TARGET static void xts_vaes(const uint8_t *keys, int nr, int decrypt, __m128i t, size_t n, uint8_t *dst,
                                 const uint8_t *src)
{
    const __m512i poly = _mm512_set_epi64(0, 0x87, 0, 0x87, 0, 0x87, 0, 0x87);
    /* Lanes t, t*x, t*x^2, t*x^3. */
    __m128i t1 = mulx1(t), t2 = mulx1(t1), t3 = mulx1(t2);
    __m512i tw = _mm512_inserti32x4(_mm512_castsi128_si512(t), t1, 1);
    tw = _mm512_inserti32x4(tw, t2, 2);
    tw = _mm512_inserti32x4(tw, t3, 3);

    while (n >= 16) {
        __m512i w[4], b[4];
        w[0] = tw;
        w[1] = MULX_LANES(tw, 4);
        w[2] = MULX_LANES(tw, 8);
        w[3] = MULX_LANES(tw, 12);
        _Pragma("GCC unroll 8")
        for (int j = 0; j < 4; j++) {
            b[j] = _mm512_xor_si512(_mm512_loadu_si512((const void *)(src + 64 * j)), w[j]);
        }
        if (decrypt) {
            VAES_ROUNDS(_mm512_aesdec_epi128, _mm512_aesdeclast_epi128, 4);
        } else {
            VAES_ROUNDS(_mm512_aesenc_epi128, _mm512_aesenclast_epi128, 4);
        }
        _Pragma("GCC unroll 8")
        for (int j = 0; j < 4; j++) {
            _mm512_storeu_si512((void *)(dst + 64 * j), _mm512_xor_si512(b[j], w[j]));
        }
        tw = MULX_LANES(tw, 16);
        n -= 16;
        src += 16 * BLOCK;
        dst += 16 * BLOCK;
    }
    /* 1..15 blocks left: four at a time, the last group masked. */
    while (n > 0) {
        size_t m = n < 4 ? n : 4;
        __mmask8 mask = (__mmask8)((1u << (2 * m)) - 1); /* two qwords per block */
        __m512i b[1];
        b[0] = _mm512_xor_si512(_mm512_maskz_loadu_epi64(mask, src), tw);
        if (decrypt) {
            VAES_ROUNDS(_mm512_aesdec_epi128, _mm512_aesdeclast_epi128, 1);
        } else {
            VAES_ROUNDS(_mm512_aesenc_epi128, _mm512_aesenclast_epi128, 1);
        }
        _mm512_mask_storeu_epi64(dst, mask, _mm512_xor_si512(b[0], tw));
        tw = MULX_LANES(tw, 4);
        n -= m;
        src += m * BLOCK;
        dst += m * BLOCK;
    }
}

/* ---- identification of f's key layout, verified on every call ---- */

struct layout {
    size_t offset; /* of the round keys from ctx */
    int rounds;
};

/* At ctx: nettle's aesN_encrypt/decrypt with their own context (and QEMU's
 * encrypt wrappers, whose key[0] is first). At ctx + one context: QEMU's
 * decrypt wrappers (aesN_decrypt(&keys[1], ...)). */
static const struct layout layouts[] = {
    {0, 14}, {0, 10}, {0, 12}, {60 * 4, 14}, {44 * 4, 10}, {52 * 4, 12},
};
#define N_LAYOUTS (sizeof layouts / sizeof layouts[0])
#define N_ENC_LAYOUTS 3 /* an encrypt wrapper reads keys[0] */

/* Layouts already verified in this thread, per direction: (f, ctx) pairs
 * whose f computed a block equal to this code's AES on the round keys at
 * ctx + layouts[i].offset. f is fixed code that reads its keys from a fixed
 * place in ctx (nettle's aesN_*, QEMU's wrappers), so the same pair keeps the
 * same layout; a pair seen again skips the probe call through f (one AES
 * block and an indirect call per 512-byte sector otherwise, a third of the
 * sector's cost). Only pointers and an index are kept, no key material.
 * QEMU reuses a handful of cipher objects per disk, so four entries per
 * direction are plenty; a miss only costs the probe. */
#define CACHE_ENTRIES 4
struct verified {
    const void *ctx;
    nettle_cipher_func *f;
    unsigned layout;
};
static __thread struct verified verified[2][CACHE_ENTRIES];
static __thread unsigned verified_next[2];

static int cached_layout(const void *ctx, nettle_cipher_func *f, int decrypt)
{
    for (unsigned i = 0; i < CACHE_ENTRIES; i++) {
        const struct verified *v = &verified[decrypt][i];
        if (v->f == f && v->ctx == ctx && f != NULL) {
            return (int)v->layout;
        }
    }
    return -1;
}

static void remember_layout(const void *ctx, nettle_cipher_func *f, int decrypt, unsigned layout)
{
    unsigned slot = verified_next[decrypt]++ % CACHE_ENTRIES;
    verified[decrypt][slot] = (struct verified){ctx, f, layout};
}

/* The layout whose AES of x (with this code's AES-NI) equals want, which f
 * computed from x; -1 if none. */
__attribute__((target("aes,pclmul,sse4.1"))) static int match_layout(const void *ctx, int decrypt, __m128i x,
                                                                     __m128i want)
{
    /* Tried once per (f, ctx) pair and thread, so in table order. */
    unsigned n_layouts = decrypt ? N_LAYOUTS : N_ENC_LAYOUTS;
    for (unsigned c = 0; c < n_layouts; c++) {
        const uint8_t *k = (const uint8_t *)ctx + layouts[c].offset;
        __m128i got = decrypt ? dec1(k, layouts[c].rounds, x) : enc1(k, layouts[c].rounds, x);
        __m128i diff = _mm_xor_si128(got, want);
        if (_mm_testz_si128(diff, diff)) {
            return (int)c;
        }
    }
    return -1;
}

/* f's layout for ctx: from this thread's verified pairs, or found by one
 * probe block through f (x = the block, its f output written to *want). */
__attribute__((target("aes,pclmul,sse4.1"))) static int layout_of(const void *ctx, nettle_cipher_func *f, int decrypt,
                                                                  const uint8_t x[BLOCK])
{
    int c = cached_layout(ctx, f, decrypt);
    if (c >= 0) {
        return c;
    }
    uint8_t ref[BLOCK];
    f(ctx, BLOCK, ref, x);
    c = match_layout(ctx, decrypt, _mm_loadu_si128((const __m128i *)x), _mm_loadu_si128((const __m128i *)ref));
    explicit_bzero(ref, sizeof ref);
    if (c >= 0) {
        remember_layout(ctx, f, decrypt, (unsigned)c);
    }
    return c;
}

__attribute__((target("aes,pclmul,sse4.1"))) static int xts_fast_x86(const void *ctx, nettle_cipher_func *f,
                                                                    int decrypt, const uint8_t t0[BLOCK],
                                                                    size_t length, uint8_t *dst, const uint8_t *src,
                                                                    enum tier tr)
{
    __m128i t = _mm_loadu_si128((const __m128i *)t0);
    uint8_t in[BLOCK];
    _mm_storeu_si128((__m128i *)in, _mm_xor_si128(_mm_loadu_si128((const __m128i *)src), t));
    int c = layout_of(ctx, f, decrypt, in);
    explicit_bzero(in, sizeof in);
    if (c < 0) {
        return 0;
    }
    const uint8_t *keys = (const uint8_t *)ctx + layouts[c].offset;
    int nr = layouts[c].rounds;
    /* Every block here, the first one too: a 512-byte sector is then two
     * full 16-block VAES iterations (no masked tail). src is read before
     * dst is written group by group, so dst == src (in place) is fine. */
    if (tr == TIER_VAES) {
        xts_vaes(keys, nr, decrypt, t, length / BLOCK, dst, src);
    } else {
        xts_aesni(keys, nr, decrypt, t, length / BLOCK, dst, src);
    }
    return 1;
}

/* T0 = E(tweak key, iv) with f's own layout when this thread has verified
 * it for (f, ctx) (else through f, which also verifies it for next time). */
__attribute__((target("aes,pclmul,sse4.1"))) static void tweak_x86(const void *ctx, nettle_cipher_func *f,
                                                                  const uint8_t iv[BLOCK], uint8_t t0[BLOCK])
{
    int c = cached_layout(ctx, f, 0);
    if (c >= 0) {
        const uint8_t *k = (const uint8_t *)ctx + layouts[c].offset;
        _mm_storeu_si128((__m128i *)t0, enc1(k, layouts[c].rounds, _mm_loadu_si128((const __m128i *)iv)));
        return;
    }
    f(ctx, BLOCK, t0, iv);
    c = match_layout(ctx, 0, _mm_loadu_si128((const __m128i *)iv), _mm_loadu_si128((const __m128i *)t0));
    if (c >= 0) {
        remember_layout(ctx, f, 0, (unsigned)c);
    }
}

/* The fast path keeps round keys in registers, loaded from ctx where they
 * are used; the compiler may spill tweaks and data blocks (the aesni tier:
 * 8 blocks + 8 tweaks > 16 xmm registers) into xts_fast_x86's frame (88
 * bytes here). Overwrite the stack that frame used once it has returned. */
__attribute__((noinline)) static void scrub_stack(void)
{
    uint8_t area[512];
    explicit_bzero(area, sizeof area);
    __asm__ __volatile__("" : : "r"(area) : "memory");
}

void isthmus_xts_tweak(const void *ctx, nettle_cipher_func *f, const uint8_t iv[BLOCK], uint8_t t0[BLOCK])
{
    if (tier() == TIER_GENERIC) {
        f(ctx, BLOCK, t0, iv);
        return;
    }
    /* No scrub_stack() here: the caller's next call, isthmus_xts_fast on
     * the same message, runs from the same frame and scrubs the stack this
     * call used (once per message, not twice). */
    tweak_x86(ctx, f, iv, t0);
}

int isthmus_xts_fast(const void *ctx, nettle_cipher_func *f, int decrypt, const uint8_t t0[BLOCK], size_t length,
                     uint8_t *dst, const uint8_t *src)
{
    enum tier tr = tier();
    if (tr == TIER_GENERIC || length < BLOCK || length % BLOCK != 0) {
        return 0;
    }
    int done = xts_fast_x86(ctx, f, decrypt != 0, t0, length, dst, src, tr);
    scrub_stack();
    return done;
}
#endif /* __x86_64__ */
