/*
 * Equality check: libisthmus-xts (argv[1], dlopen()ed so it does not
 * interpose here) against the real nettle XTS linked into this program, on
 * random keys, tweaks and data, in the cipher shapes it meets:
 *   nettle      nettle_xts_*_message with aesN_encrypt/aesN_decrypt and a
 *               single context (AES-128/192/256);
 *   qemu        QEMU's cipher-nettle wrappers: the context is an array of
 *               two (encrypt, decrypt) and the decrypt wrapper uses the
 *               second (AES-128/192/256);
 *   serpent     a cipher the fast path must not recognise (generic path).
 * Whole blocks (16 B .. 64 KiB + 48 B, odd block counts for the vector
 * tails), lengths with a partial last block (ciphertext stealing: must fall
 * back to nettle), out of place and in place, decrypt of nettle's
 * ciphertext and of random data. The cipher functions count the bytes the
 * library passes through them: with a fast tier (ISTHMUS_XTS_TIER, default
 * the CPU's best) AES messages of whole blocks must pass at most the tweak
 * block and one probe block (32 bytes: the first call of a (f, ctx) pair in
 * a thread), and nothing once that pair's layout is verified (which must
 * happen); serpent and the generic tier pass everything. The QEMU shape
 * also decrypts with nettle's own function on the wrapper's context pointer
 * (another f, same ctx: must not reuse the wrapper's layout).
 * Prints "xts-equal: N cases identical (IMPL, tier T, fast F)" and exits 0,
 * or names the first difference and exits 1. Run by hv/tests/xts_preload.rs.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <nettle/aes.h>
#include <nettle/serpent.h>
#include <nettle/xts.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

typedef void xts_encrypt_fn(const void *, const void *, nettle_cipher_func *, const uint8_t *, size_t, uint8_t *,
                            const uint8_t *);
typedef void xts_decrypt_fn(const void *, const void *, nettle_cipher_func *, nettle_cipher_func *, const uint8_t *,
                            size_t, uint8_t *, const uint8_t *);

static void fill(void *p, size_t n)
{
    uint8_t *b = p;
    while (n > 0) {
        ssize_t got = getrandom(b, n, 0);
        if (got <= 0) {
            perror("getrandom");
            exit(2);
        }
        b += got;
        n -= (size_t)got;
    }
}

static int check(const char *what, const char *shape, int bits, size_t len, const uint8_t *want, const uint8_t *got)
{
    if (memcmp(want, got, len) != 0) {
        size_t i = 0;
        while (want[i] == got[i]) {
            i++;
        }
        fprintf(stderr, "xts-equal: %s %s-%d length %zu differs from nettle at byte %zu\n", what, shape, bits, len, i);
        return 1;
    }
    return 0;
}

/* Bytes the library passed through the cipher functions below. */
static size_t through_f;

/* nettle's own functions, counted. */
#define COUNTED(NAME, CTX, FN)                                                                                          \
    static void NAME(const void *ctx, size_t length, uint8_t *dst, const uint8_t *src)                                 \
    {                                                                                                                  \
        through_f += length;                                                                                           \
        FN((const CTX *)ctx, length, dst, src);                                                                        \
    }
COUNTED(n128e, struct aes128_ctx, aes128_encrypt)
COUNTED(n128d, struct aes128_ctx, aes128_decrypt)
COUNTED(n192e, struct aes192_ctx, aes192_encrypt)
COUNTED(n192d, struct aes192_ctx, aes192_decrypt)
COUNTED(n256e, struct aes256_ctx, aes256_encrypt)
COUNTED(n256d, struct aes256_ctx, aes256_decrypt)
COUNTED(serpe, struct serpent_ctx, serpent_encrypt)
COUNTED(serpd, struct serpent_ctx, serpent_decrypt)

/* QEMU's crypto/cipher-nettle.c.inc shape: keys[0] encrypts, keys[1]
 * decrypts. */
#define QEMU_WRAP(NAME, CTX, FN, IDX)                                                                                   \
    static void NAME(const void *ctx, size_t length, uint8_t *dst, const uint8_t *src)                                 \
    {                                                                                                                  \
        const CTX *keys = ctx;                                                                                         \
        through_f += length;                                                                                           \
        FN(&keys[IDX], length, dst, src);                                                                              \
    }
QEMU_WRAP(q128e, struct aes128_ctx, aes128_encrypt, 0)
QEMU_WRAP(q128d, struct aes128_ctx, aes128_decrypt, 1)
QEMU_WRAP(q192e, struct aes192_ctx, aes192_encrypt, 0)
QEMU_WRAP(q192d, struct aes192_ctx, aes192_decrypt, 1)
QEMU_WRAP(q256e, struct aes256_ctx, aes256_encrypt, 0)
QEMU_WRAP(q256d, struct aes256_ctx, aes256_decrypt, 1)

enum shape { NETTLE, QEMU, SERPENT };
static const char *const shape_names[] = {"nettle", "qemu", "serpent"};

/* All contexts of one case; the data and tweak keys as QEMU keeps them. */
struct keys {
    struct aes128_ctx a128[2], t128[2];
    struct aes192_ctx a192[2], t192[2];
    struct aes256_ctx a256[2], t256[2];
    struct serpent_ctx s, st;
};

struct cipher {
    const void *ectx, *dctx, *tctx;
    nettle_cipher_func *encf, *decf;
    /* QEMU shape: nettle's own decrypt function, given the same context
     * pointer as the QEMU decrypt wrapper (a different f for the same ctx
     * must not reuse the wrapper's verified layout). NULL otherwise. */
    nettle_cipher_func *alt_decf;
};

static struct cipher setup(struct keys *k, enum shape shape, int bits, const uint8_t *key)
{
    struct cipher c;
    size_t half = (size_t)bits / 8;
    if (shape == SERPENT) {
        serpent_set_key(&k->s, half, key);
        serpent_set_key(&k->st, half, key + half);
        c.ectx = c.dctx = &k->s, c.tctx = &k->st, c.encf = serpe, c.decf = serpd, c.alt_decf = NULL;
        return c;
    }
    int q = shape == QEMU;
    /* [0] encrypts, [1] decrypts. nettle's API gets the one it needs; QEMU's
     * wrappers get the array and pick (the decrypt wrapper uses [1]). */
#define AES_SETUP(N, A, T)                                                                                              \
    aes##N##_set_encrypt_key(&A[0], key);                                                                              \
    aes##N##_set_decrypt_key(&A[1], key);                                                                              \
    aes##N##_set_encrypt_key(&T[0], key + half);                                                                       \
    aes##N##_set_decrypt_key(&T[1], key + half);                                                                       \
    c.ectx = &A[0], c.dctx = &A[q ? 0 : 1], c.tctx = &T[0];                                                            \
    c.encf = q ? q##N##e : n##N##e, c.decf = q ? q##N##d : n##N##d;                                                    \
    c.alt_decf = q ? n##N##d : NULL;
    switch (bits) {
    case 128:
        AES_SETUP(128, k->a128, k->t128)
        break;
    case 192:
        AES_SETUP(192, k->a192, k->t192)
        break;
    default:
        AES_SETUP(256, k->a256, k->t256)
        break;
    }
    return c;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: xts-equal /path/to/libisthmus-xts.so\n");
        return 2;
    }
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        fprintf(stderr, "xts-equal: %s\n", dlerror());
        return 2;
    }
    xts_encrypt_fn *enc = (xts_encrypt_fn *)dlvsym(lib, "nettle_xts_encrypt_message", "NETTLE_8");
    xts_decrypt_fn *dec = (xts_decrypt_fn *)dlvsym(lib, "nettle_xts_decrypt_message", "NETTLE_8");
    const char *impl = dlsym(lib, "isthmus_xts_impl");
    const char *(*tier_fn)(void) = (const char *(*)(void))dlsym(lib, "isthmus_xts_tier");
    if (enc == NULL || dec == NULL || impl == NULL || tier_fn == NULL ||
        (void *)enc == (void *)nettle_xts_encrypt_message) {
        fprintf(stderr, "xts-equal: %s does not export the batched XTS in node NETTLE_8\n", argv[1]);
        return 2;
    }
    const char *tier = tier_fn();
    int fast_tier = strcmp(tier, "generic") != 0;

    static const size_t lengths[] = {16, 32, 48, 64, 80, 240, 256, 272, 512, 528, 4096, 4112, 4096 + 80, 8192,
                                     65536, 65536 + 48,
                                     /* partial last block: nettle's ciphertext stealing */
                                     17, 31, 100, 513, 4095, 65537};
    static const int bits_of[] = {128, 192, 256};
    enum { MAX = 65536 + 64 };
    uint8_t *src = malloc(MAX), *want = malloc(MAX), *got = malloc(MAX), *back = malloc(MAX);
    struct keys *k = malloc(sizeof *k);
    if (!src || !want || !got || !back || !k) {
        return 2;
    }
    int cases = 0, fast = 0, cached = 0;
    for (int round = 0; round < 4; round++) {
        for (enum shape shape = NETTLE; shape <= SERPENT; shape++) {
            for (int b = 0; b < 3; b++) {
                int bits = bits_of[b];
                const char *sn = shape_names[shape];
                uint8_t key[64], tweak[16];
                fill(key, sizeof key);
                struct cipher c = setup(k, shape, bits, key);
                for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
                    size_t len = lengths[i];
                    int whole = len % 16 == 0;
                    fill(tweak, sizeof tweak);
                    fill(src, len);
                    /* Encrypt: reference, then ours out of place and in place. */
                    xts_encrypt_message(c.ectx, c.tctx, c.encf, tweak, len, want, src);
                    through_f = 0;
                    enc(c.ectx, c.tctx, c.encf, tweak, len, got, src);
                    size_t enc_through = through_f;
                    if (check("encrypt", sn, bits, len, want, got)) {
                        return 1;
                    }
                    memcpy(got, src, len);
                    enc(c.ectx, c.tctx, c.encf, tweak, len, got, got);
                    if (check("encrypt in place", sn, bits, len, want, got)) {
                        return 1;
                    }
                    /* Decrypt the reference ciphertext with ours, both ways. */
                    through_f = 0;
                    dec(c.dctx, c.tctx, c.decf, c.encf, tweak, len, back, want);
                    size_t dec_through = through_f;
                    if (check("decrypt", sn, bits, len, src, back)) {
                        return 1;
                    }
                    memcpy(back, want, len);
                    dec(c.dctx, c.tctx, c.decf, c.encf, tweak, len, back, back);
                    if (check("decrypt in place", sn, bits, len, src, back)) {
                        return 1;
                    }
                    /* And random ciphertext: decrypt must equal nettle's too. */
                    fill(src, len);
                    xts_decrypt_message(c.dctx, c.tctx, c.decf, c.encf, tweak, len, want, src);
                    dec(c.dctx, c.tctx, c.decf, c.encf, tweak, len, got, src);
                    if (check("decrypt random", sn, bits, len, want, got)) {
                        return 1;
                    }
                    cases += 5;
                    if (c.alt_decf != NULL) {
                        /* Same ctx pointer, another f (reads other round keys). */
                        xts_decrypt_message(c.dctx, c.tctx, c.alt_decf, c.encf, tweak, len, want, src);
                        dec(c.dctx, c.tctx, c.alt_decf, c.encf, tweak, len, got, src);
                        if (check("decrypt, same ctx with another f", sn, bits, len, want, got)) {
                            return 1;
                        }
                        cases += 1;
                    }
                    /* Which path ran: the fast one passes at most the tweak
                     * block and one probe block through f (32 bytes) on the
                     * first call for a (f, ctx) pair in this thread, and
                     * nothing once the pair's layout is verified. */
                    int expect_fast = fast_tier && shape != SERPENT && whole;
                    int was_fast = enc_through <= 32 && dec_through <= 32;
                    cached += expect_fast && enc_through == 0 && dec_through == 0;
                    if (whole && len > 32 && expect_fast != was_fast) {
                        fprintf(stderr,
                                "xts-equal: %s-%d length %zu: tier %s passed %zu/%zu bytes through the cipher "
                                "function (expected the %s path)\n",
                                sn, bits, len, tier, enc_through, dec_through, expect_fast ? "fast" : "generic");
                        return 1;
                    }
                    fast += was_fast && len > 32;
                }
            }
        }
    }
    if (fast_tier && cached == 0) {
        fprintf(stderr, "xts-equal: tier %s never reused a verified layout (every call probed through f)\n", tier);
        return 1;
    }
    printf("xts-equal: %d cases identical (%s, tier %s, fast %d, verified layout reused %d)\n", cases, impl, tier, fast,
           cached);
    return 0;
}
