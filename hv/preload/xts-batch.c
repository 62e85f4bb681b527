/*
 * libisthmus-xts: batched XTS for nettle's generic XTS entry points.
 *
 * Debian's QEMU (qemu-system-*, qemu-storage-daemon, qemu-img, qemu-io) is
 * built with nettle as its cipher backend and encrypts each LUKS sector with
 * nettle_xts_encrypt_message / nettle_xts_decrypt_message. nettle 3.8's
 * xts.c calls the block cipher once per 16-byte block with the tweak
 * doubling in C between calls, so AES-NI never sees more than one block
 * (372-521 MiB/s per core here, against 5-6.6 GiB/s for nettle's AES over a
 * whole sector; hv/bench/xts-speed.c).
 *
 * Preloaded into the QEMU processes hv starts (LD_PRELOAD in the child's
 * environment only), this library defines the same two symbols, in the
 * same version node (NETTLE_8, see xts-batch.map) so QEMU's versioned
 * references bind here. Each call computes T0 = E_twk(tweak), all tweaks
 * T_j = T0 * x^j in GF(2^128) (IEEE 1619 / nettle's xts_shift), XORs them
 * into the data, calls the caller's cipher function ONCE over up to
 * CHUNK_BLOCKS blocks, and XORs the tweaks again: the same output as
 * nettle, byte for byte (hv/preload/xts-equal.c checks it against the real
 * library). Lengths that are not a whole number of blocks (ciphertext
 * stealing) or shorter than a block go to the real nettle function
 * (dlvsym RTLD_NEXT).
 *
 * No key material is read, copied or kept: the cipher contexts are passed
 * through untouched to the caller's cipher functions; only the per-call
 * tweak values live on this stack, and they are wiped before return.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* nettle_cipher_func is declared in xts-fast.h (no nettle-dev needed);
 * xts-equal.c is compiled against the real headers and checks the two agree
 * in behaviour. */
#include "xts-fast.h"

#define BLOCK 16
/* 256 blocks = 4 KiB of tweaks on the stack: one LUKS sector (512 B or
 * 4 KiB) is one cipher call; larger requests are split. */
#define CHUNK_BLOCKS 256

typedef void xts_encrypt_fn(const void *enc_ctx, const void *twk_ctx, nettle_cipher_func *encf,
                            const uint8_t *tweak, size_t length, uint8_t *dst, const uint8_t *src);
typedef void xts_decrypt_fn(const void *dec_ctx, const void *twk_ctx, nettle_cipher_func *decf,
                            nettle_cipher_func *encf, const uint8_t *tweak, size_t length,
                            uint8_t *dst, const uint8_t *src);

/* Marker for hv and tests: which XTS this library provides. */
__attribute__((visibility("default"))) const char isthmus_xts_impl[] = "batched-preload";

/* Which code path runs in this process: "vaes", "aesni" (xts-fast.c) or
 * "generic" (xts_batched below, through the caller's cipher function). */
__attribute__((visibility("default"))) const char *isthmus_xts_tier(void)
{
    return isthmus_xts_fast_tier();
}

/* qcow2 encrypts and decrypts through a bounce buffer it allocates per
 * request (qemu_try_blockalign: posix_memalign of the request, up to 2 MiB)
 * and frees right after. glibc serves those from fresh mmap()s (or trims the
 * arena's top after each free), so every request page-faults and clears its
 * buffer again: about a third of a qemu-io write's time (hv/README.md
 * "Benchmark"). Keeping such buffers in the heap and the freed top mapped
 * makes the next request reuse warm pages; QEMU's guest RAM is mmap()ed
 * directly, not malloc()ed, so it is not affected. Cost: each malloc arena
 * may keep up to TRIM_KEEP of freed memory mapped (bench_hv's qemu_rss_mib). */
#ifndef MMAP_ABOVE
#define MMAP_ABOVE (4 << 20)
#endif
#ifndef TRIM_KEEP
#define TRIM_KEEP (8 << 20)
#endif

__attribute__((constructor)) static void keep_bounce_buffers_warm(void)
{
    if (getenv("ISTHMUS_XTS_MALLOC_DEFAULT") != NULL) {
        return; /* for measuring the difference (hv/bench/qemu-io-luks.sh) */
    }
    mallopt(M_MMAP_THRESHOLD, MMAP_ABOVE);
    mallopt(M_TRIM_THRESHOLD, TRIM_KEEP);
}

static void *real_symbol(const char *name)
{
    /* Preloaded: libnettle comes after us in the global scope. */
    void *f = dlvsym(RTLD_NEXT, name, "NETTLE_8");
    if (f == NULL) {
        /* dlopen()ed (the equality test): RTLD_NEXT sees only our own
         * dependencies, so ask the already loaded libnettle directly. */
        void *nettle = dlopen("libnettle.so.8", RTLD_NOW | RTLD_NOLOAD);
        if (nettle != NULL) {
            f = dlvsym(nettle, name, "NETTLE_8");
        }
    }
    if (f == NULL) {
        /* Only reachable if this library is preloaded into a process
         * without libnettle: nothing there can call us with a partial
         * block, but say what happened rather than jump to NULL. */
        fprintf(stderr, "libisthmus-xts: %s not found in the next libraries (is libnettle8 loaded?)\n", name);
        abort();
    }
    return f;
}

/* The real function, looked up once per process (a race only repeats the
 * same lookup). */
static void *real_cached(void **slot, const char *name)
{
    void *f = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    if (f == NULL) {
        f = real_symbol(name);
        __atomic_store_n(slot, f, __ATOMIC_RELEASE);
    }
    return f;
}

static uint64_t load_le64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static void store_le64(uint8_t *p, uint64_t v)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    memcpy(p, &v, 8);
}

/* T <- T * x in GF(2^128), little-endian as in IEEE 1619 and nettle's
 * xts_shift: shift left one bit, XOR 0x87 into the low byte on carry. */
static void xts_double(uint64_t *lo, uint64_t *hi)
{
    uint64_t carry = *hi >> 63;
    *hi = (*hi << 1) | (*lo >> 63);
    *lo = (*lo << 1) ^ (0x87 & (0 - carry));
}

static void xor_block_run(uint8_t *dst, const uint8_t *a, const uint8_t *b, size_t len)
{
    /* memcpy keeps this alignment-free; compilers turn it into plain
     * 64-bit loads and stores (and vectorise the loop). */
    for (size_t i = 0; i < len; i += 8) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        x ^= y;
        memcpy(dst + i, &x, 8);
    }
}

/* dst = f(ctx, src ^ T) ^ T over whole blocks, one f call per chunk.
 * dst may equal src (QEMU decrypts in place); like nettle, partial
 * overlap is not supported. */
static void xts_batched(const void *ctx, nettle_cipher_func *f, const uint8_t t0[BLOCK], size_t length,
                        uint8_t *dst, const uint8_t *src)
{
    uint8_t tweaks[CHUNK_BLOCKS * BLOCK] __attribute__((aligned(16)));
    uint64_t lo = load_le64(t0), hi = load_le64(t0 + 8);
    size_t used = 0;

    while (length > 0) {
        size_t n = length / BLOCK;
        if (n > CHUNK_BLOCKS) {
            n = CHUNK_BLOCKS;
        }
        size_t bytes = n * BLOCK;
        for (size_t j = 0; j < n; j++) {
            store_le64(tweaks + j * BLOCK, lo);
            store_le64(tweaks + j * BLOCK + 8, hi);
            xts_double(&lo, &hi);
        }
        xor_block_run(dst, src, tweaks, bytes);
        f(ctx, bytes, dst, dst);
        xor_block_run(dst, dst, tweaks, bytes);
        if (bytes > used) {
            used = bytes;
        }
        length -= bytes;
        dst += bytes;
        src += bytes;
    }
    explicit_bzero(tweaks, used);
    lo = hi = 0;
    __asm__ __volatile__("" : : "r"(&lo), "r"(&hi) : "memory");
}

__attribute__((visibility("default"))) void nettle_xts_encrypt_message(const void *enc_ctx, const void *twk_ctx, nettle_cipher_func *encf,
                                const uint8_t *tweak, size_t length, uint8_t *dst, const uint8_t *src)
{
    static void *real;
    if (length < BLOCK || length % BLOCK != 0) {
        xts_encrypt_fn *r = (xts_encrypt_fn *)real_cached(&real, "nettle_xts_encrypt_message");
        r(enc_ctx, twk_ctx, encf, tweak, length, dst, src);
        return;
    }
    uint8_t t0[BLOCK];
    isthmus_xts_tweak(twk_ctx, encf, tweak, t0);
    if (!isthmus_xts_fast(enc_ctx, encf, 0, t0, length, dst, src)) {
        xts_batched(enc_ctx, encf, t0, length, dst, src);
    }
    explicit_bzero(t0, sizeof t0);
}

__attribute__((visibility("default"))) void nettle_xts_decrypt_message(const void *dec_ctx, const void *twk_ctx, nettle_cipher_func *decf,
                                nettle_cipher_func *encf, const uint8_t *tweak, size_t length,
                                uint8_t *dst, const uint8_t *src)
{
    static void *real;
    if (length < BLOCK || length % BLOCK != 0) {
        xts_decrypt_fn *r = (xts_decrypt_fn *)real_cached(&real, "nettle_xts_decrypt_message");
        r(dec_ctx, twk_ctx, decf, encf, tweak, length, dst, src);
        return;
    }
    /* XTS decryption: the tweak is always *encrypted* with the tweak key. */
    uint8_t t0[BLOCK];
    isthmus_xts_tweak(twk_ctx, encf, tweak, t0);
    if (!isthmus_xts_fast(dec_ctx, decf, 1, t0, length, dst, src)) {
        xts_batched(dec_ctx, decf, t0, length, dst, src);
    }
    explicit_bzero(t0, sizeof t0);
}
