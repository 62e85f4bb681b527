/*
 * isthmus-iobench: a tiny fio stand-in for the test-server guest (fio and
 * its libraries do not fit a busybox root). Synchronous I/O at queue depth
 * 1 with O_DIRECT on a block device, for a fixed time:
 *
 *   isthmus-iobench <device> <randread|randwrite|seqread|seqwrite> <seconds>
 *
 * Random modes use 4 KiB blocks at uniformly random aligned offsets over the
 * whole device; sequential modes use 1 MiB blocks, wrapping at the end.
 * Writes write a fixed non-zero pattern. Prints one line:
 *   ISTHMUS-IO mode=<m> bs=<bytes> ops=<n> secs=<s> iops=<n> mibps=<x>
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* xorshift64*: reproducible offsets, no libc rand state. */
static uint64_t next(uint64_t *s) {
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * 2685821657736338717ULL;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s <device> <randread|randwrite|seqread|seqwrite> <seconds>\n", argv[0]);
    return 2;
  }
  const char *mode = argv[2];
  int rnd = strncmp(mode, "rand", 4) == 0;
  int wr = strstr(mode, "write") != NULL;
  double secs = atof(argv[3]);
  size_t bs = rnd ? 4096 : 1 << 20;
  int fd = open(argv[1], (wr ? O_RDWR : O_RDONLY) | O_DIRECT);
  if (fd < 0) {
    perror(argv[1]);
    return 1;
  }
  off_t size = lseek(fd, 0, SEEK_END);
  if (size < (off_t)bs) {
    fprintf(stderr, "%s: too small\n", argv[1]);
    return 1;
  }
  void *buf;
  if (posix_memalign(&buf, 4096, bs) != 0) return 1;
  memset(buf, 0x5a, bs);
  uint64_t blocks = (uint64_t)size / bs, seed = 0x9e3779b97f4a7c15ULL, ops = 0, pos = 0;
  double start = now(), end = start + secs, t = start;
  while (t < end) {
    for (int i = 0; i < 16; i++) {
      uint64_t blk = rnd ? next(&seed) % blocks : pos++ % blocks;
      ssize_t n = wr ? pwrite(fd, buf, bs, (off_t)(blk * bs)) : pread(fd, buf, bs, (off_t)(blk * bs));
      if (n != (ssize_t)bs) {
        perror("io");
        return 1;
      }
      ops++;
    }
    t = now();
  }
  if (wr) fdatasync(fd);
  double el = now() - start;
  printf("ISTHMUS-IO mode=%s bs=%zu ops=%llu secs=%.2f iops=%.0f mibps=%.1f\n", mode, bs,
         (unsigned long long)ops, el, ops / el, ops * (double)bs / el / 1048576.0);
  return 0;
}
