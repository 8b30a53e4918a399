/*
 * stamper: the vmshift test guest's disk writer / verifier (static, runs as part of /init).
 *
 * Block format (every 4096-byte block of the region; all integers little-endian u64):
 *   word 0  magic  0x3154504D48534D56 ("VMSHSTP1")
 *   word 1  block number (index from the start of the device, in 4 KiB blocks)
 *   word 2  sequence number of the batch that wrote it
 *   word 3  check = magic ^ block ^ seq ^ 0xA5A5A5A5A5A5A5A5
 *   word i (4..511) = fill(block, seq, i)  -- see fill() below; detects torn / mixed blocks
 *
 * Modes (argv): stamper write DEV START BLOCKS BATCH RATE SEQ0 PASSES
 *                 writes passes over [START, START+BLOCKS) in batches of BATCH blocks,
 *                 RATE bytes/s (0 = unlimited), sequence numbers starting at SEQ0 and
 *                 increasing by one per batch; PASSES = 0 means forever.  After each batch
 *                 is written and flushed (fdatasync) it prints
 *                   VMSHIFT-SEQ <floor> <devname> last=<seq of this batch>
 *                 where <floor> is the smallest sequence number any block of the region can
 *                 hold at that moment (0 until the first pass completes).  The host-side
 *                 verifier checks every block against the last floor it saw.
 *               stamper verify DEV START BLOCKS
 *                 prints VMSHIFT-VERIFY OK blocks=N min=A max=B  or  VMSHIFT-VERIFY BAD ...
 * Output goes to stdout, which /init points at the serial console.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h>

#define BS 4096u
#define WORDS (BS / 8u)
#define MAGIC 0x3154504D48534D56ull
#define CHECKX 0xA5A5A5A5A5A5A5A5ull

static uint64_t fill(uint64_t block, uint64_t seq, uint64_t i) {
	return (block * 0x9E3779B97F4A7C15ull) ^ (seq * 0xC2B2AE3D27D4EB4Full) ^ (i * 0x165667B19E3779F9ull);
}

static void stamp(uint64_t *w, uint64_t block, uint64_t seq) {
	w[0] = MAGIC;
	w[1] = block;
	w[2] = seq;
	w[3] = MAGIC ^ block ^ seq ^ CHECKX;
	for (uint64_t i = 4; i < WORDS; i++)
		w[i] = fill(block, seq, i);
}

/* returns 0 if valid, sets *seq */
static int check(const uint64_t *w, uint64_t block, uint64_t *seq) {
	if (w[0] != MAGIC || w[1] != block || w[3] != (MAGIC ^ block ^ w[2] ^ CHECKX))
		return -1;
	for (uint64_t i = 4; i < WORDS; i++)
		if (w[i] != fill(block, w[2], i))
			return -2;
	*seq = w[2];
	return 0;
}

static double now(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t arg(char **argv, int i) { return strtoull(argv[i], NULL, 0); }

static uint64_t dev_blocks(int fd) {
	uint64_t bytes = 0;
	if (ioctl(fd, BLKGETSIZE64, &bytes) != 0)
		return 0;
	return bytes / BS;
}

static int do_write(char **argv) {
	const char *dev = argv[2];
	const char *name = strrchr(dev, '/') ? strrchr(dev, '/') + 1 : dev;
	uint64_t start = arg(argv, 3), blocks = arg(argv, 4), batch = arg(argv, 5);
	uint64_t rate = arg(argv, 6), seq = arg(argv, 7), passes = arg(argv, 8);
	int fd = open(dev, O_RDWR | O_DIRECT);
	if (fd < 0) {
		printf("VMSHIFT-ERROR open %s: %s\n", dev, strerror(errno));
		return 1;
	}
	uint64_t total = dev_blocks(fd);
	if (blocks == 0 || start + blocks > total)
		blocks = total > start ? total - start : 0;
	if (batch == 0)
		batch = 16;
	if (blocks == 0) {
		printf("VMSHIFT-ERROR empty region\n");
		return 1;
	}
	uint64_t *buf;
	if (posix_memalign((void **)&buf, BS, batch * BS) != 0)
		return 1;
	uint64_t nbatches = (blocks + batch - 1) / batch;
	printf("VMSHIFT-WRITER start=%" PRIu64 " blocks=%" PRIu64 " batch=%" PRIu64 " rate=%" PRIu64
	       " seq0=%" PRIu64 " batches_per_pass=%" PRIu64 "\n",
	       start, blocks, batch, rate, seq, nbatches);
	fflush(stdout);
	double t0 = now();
	uint64_t written = 0;
	/* hist[b] = sequence number batch slot b was last written with (0 = never) */
	uint64_t *hist = calloc(nbatches, sizeof(uint64_t));
	for (uint64_t pass = 0; passes == 0 || pass < passes; pass++) {
		for (uint64_t b = 0; b < nbatches; b++, seq++) {
			uint64_t first = start + b * batch;
			uint64_t n = batch;
			if (first + n > start + blocks)
				n = start + blocks - first;
			for (uint64_t k = 0; k < n; k++)
				stamp(buf + k * WORDS, first + k, seq);
			size_t len = (size_t)(n * BS);
			ssize_t r = pwrite(fd, buf, len, (off_t)(first * BS));
			if (r != (ssize_t)len) {
				printf("VMSHIFT-ERROR write block=%" PRIu64 ": %s\n", first, r < 0 ? strerror(errno) : "short");
				fflush(stdout);
				return 1;
			}
			if (fdatasync(fd) != 0) {
				printf("VMSHIFT-ERROR fdatasync: %s\n", strerror(errno));
				fflush(stdout);
				return 1;
			}
			hist[b] = seq;
			uint64_t floor = UINT64_MAX;
			for (uint64_t j = 0; j < nbatches; j++)
				if (hist[j] < floor)
					floor = hist[j];
			printf("VMSHIFT-SEQ %" PRIu64 " %s last=%" PRIu64 "\n", floor, name, seq);
			fflush(stdout);
			written += len;
			if (rate) {
				double due = t0 + (double)written / (double)rate;
				double d = due - now();
				if (d < -0.1) {
					/* Fell behind (vCPU starved): restart the schedule instead of
					 * bursting to catch up, so the rate never exceeds RATE. */
					t0 = now();
					written = 0;
				}
				if (d > 0) {
					struct timespec ts = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
					nanosleep(&ts, NULL);
				}
			}
		}
	}
	printf("VMSHIFT-DONE seq=%" PRIu64 " %s\n", seq - 1, name);
	fflush(stdout);
	close(fd);
	return 0;
}

static int do_verify(char **argv) {
	const char *dev = argv[2];
	uint64_t start = arg(argv, 3), blocks = arg(argv, 4);
	int fd = open(dev, O_RDONLY | O_DIRECT);
	if (fd < 0) {
		printf("VMSHIFT-VERIFY BAD open %s: %s\n", dev, strerror(errno));
		return 1;
	}
	uint64_t total = dev_blocks(fd);
	if (blocks == 0 || start + blocks > total)
		blocks = total > start ? total - start : 0;
	uint64_t *buf;
	if (posix_memalign((void **)&buf, BS, BS) != 0)
		return 1;
	uint64_t lo = UINT64_MAX, hi = 0;
	for (uint64_t b = start; b < start + blocks; b++) {
		uint64_t s;
		if (pread(fd, buf, BS, (off_t)(b * BS)) != (ssize_t)BS || check(buf, b, &s) != 0) {
			printf("VMSHIFT-VERIFY BAD block=%" PRIu64 " %s\n", b, dev);
			fflush(stdout);
			return 1;
		}
		if (s < lo)
			lo = s;
		if (s > hi)
			hi = s;
	}
	printf("VMSHIFT-VERIFY OK blocks=%" PRIu64 " min=%" PRIu64 " max=%" PRIu64 " %s\n", blocks, lo, hi, dev);
	fflush(stdout);
	return 0;
}

int main(int argc, char **argv) {
	if (argc >= 9 && strcmp(argv[1], "write") == 0)
		return do_write(argv);
	if (argc >= 5 && strcmp(argv[1], "verify") == 0)
		return do_verify(argv);
	fprintf(stderr, "usage: stamper write DEV START BLOCKS BATCH RATE SEQ0 PASSES | verify DEV START BLOCKS\n");
	return 2;
}
