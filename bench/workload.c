/* Allocation-heavy syscall loop for benchmarks: each iteration makes a pipe, opens
 * /dev/null and a UNIX socket, and closes them (kmalloc, filp, sock_inode_cache, ...).
 * Usage: workload SECONDS  -> prints "iterations N seconds S" on stdout. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	double secs = argc > 1 ? atof(argv[1]) : 5.0;
	double start = now(), t = start;
	unsigned long n = 0;
	int p[2];

	while (t - start < secs) {
		for (int i = 0; i < 256; i++) {
			if (pipe(p) == 0) {
				close(p[0]);
				close(p[1]);
			}
			int fd = open("/dev/null", O_RDONLY);
			if (fd >= 0)
				close(fd);
			int s = socket(AF_UNIX, SOCK_STREAM, 0);
			if (s >= 0)
				close(s);
		}
		n += 256;
		t = now();
	}
	printf("iterations %lu seconds %.3f\n", n, t - start);
	return 0;
}
