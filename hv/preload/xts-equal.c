/*
 * Equality check: libisthmus-xts (argv[1], dlopen()ed so it does not
 * interpose here) against the real nettle XTS linked into this program, on
 * random keys, tweaks and data: AES-128 and AES-256 as QEMU's LUKS code
 * calls them (nettle_xts_*_message with aesN_encrypt/aesN_decrypt), whole
 * blocks (the batched path: 16 B .. 64 KiB + 48 B, past one 4 KiB chunk),
 * lengths with a partial last block (ciphertext stealing: must fall back to
 * nettle), out of place and in place, and a decrypt round trip.
 * Prints "xts-equal: N cases identical" and exits 0, or names the first
 * difference and exits 1. Run by hv/tests/xts_preload.rs.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <nettle/aes.h>
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

static int check(const char *what, int bits, size_t len, const uint8_t *want, const uint8_t *got)
{
    if (memcmp(want, got, len) != 0) {
        size_t i = 0;
        while (want[i] == got[i]) {
            i++;
        }
        fprintf(stderr, "xts-equal: %s AES-%d length %zu differs from nettle at byte %zu\n", what, bits, len, i);
        return 1;
    }
    return 0;
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
    if (enc == NULL || dec == NULL || impl == NULL || (void *)enc == (void *)nettle_xts_encrypt_message) {
        fprintf(stderr, "xts-equal: %s does not export the batched XTS in node NETTLE_8\n", argv[1]);
        return 2;
    }

    static const size_t lengths[] = {16, 32, 48, 512, 528, 4096, 4112, 8192, 65536, 65536 + 48,
                                     /* partial last block: nettle's ciphertext stealing */
                                     17, 31, 100, 513, 4095, 65537};
    enum { MAX = 65536 + 64 };
    uint8_t *src = malloc(MAX), *want = malloc(MAX), *got = malloc(MAX), *back = malloc(MAX);
    if (!src || !want || !got || !back) {
        return 2;
    }
    int cases = 0;
    for (int round = 0; round < 8; round++) {
        for (int k = 0; k < 2; k++) {
            int bits = k ? 256 : 128;
            uint8_t key[64], tweak[16];
            fill(key, sizeof key);
            struct aes256_ctx e256, d256, t256;
            struct aes128_ctx e128, d128, t128;
            const void *ectx, *dctx, *tctx;
            nettle_cipher_func *encf, *decf;
            if (bits == 256) {
                aes256_set_encrypt_key(&e256, key);
                aes256_set_decrypt_key(&d256, key);
                aes256_set_encrypt_key(&t256, key + 32);
                ectx = &e256, dctx = &d256, tctx = &t256;
                encf = (nettle_cipher_func *)aes256_encrypt, decf = (nettle_cipher_func *)aes256_decrypt;
            } else {
                aes128_set_encrypt_key(&e128, key);
                aes128_set_decrypt_key(&d128, key);
                aes128_set_encrypt_key(&t128, key + 16);
                ectx = &e128, dctx = &d128, tctx = &t128;
                encf = (nettle_cipher_func *)aes128_encrypt, decf = (nettle_cipher_func *)aes128_decrypt;
            }
            for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
                size_t len = lengths[i];
                fill(tweak, sizeof tweak);
                fill(src, len);
                /* Encrypt: reference, then ours out of place and in place. */
                xts_encrypt_message(ectx, tctx, encf, tweak, len, want, src);
                enc(ectx, tctx, encf, tweak, len, got, src);
                if (check("encrypt", bits, len, want, got)) {
                    return 1;
                }
                memcpy(got, src, len);
                enc(ectx, tctx, encf, tweak, len, got, got);
                if (check("encrypt in place", bits, len, want, got)) {
                    return 1;
                }
                /* Decrypt the reference ciphertext with ours, both ways. */
                dec(dctx, tctx, decf, encf, tweak, len, back, want);
                if (check("decrypt", bits, len, src, back)) {
                    return 1;
                }
                memcpy(back, want, len);
                dec(dctx, tctx, decf, encf, tweak, len, back, back);
                if (check("decrypt in place", bits, len, src, back)) {
                    return 1;
                }
                /* And random ciphertext: decrypt must equal nettle's too. */
                fill(src, len);
                xts_decrypt_message(dctx, tctx, decf, encf, tweak, len, want, src);
                dec(dctx, tctx, decf, encf, tweak, len, got, src);
                if (check("decrypt random", bits, len, want, got)) {
                    return 1;
                }
                cases += 5;
            }
        }
    }
    printf("xts-equal: %d cases identical (%s)\n", cases, impl);
    return 0;
}
