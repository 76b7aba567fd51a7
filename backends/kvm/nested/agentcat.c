/* agentcat: connect to hyper-vmm's agent socket (retrying until it exists),
 * print what hyperstart sends (printable bytes), and exit 0 as soon as a
 * "ready" control frame arrived. Prints the time from its own start.
 * With "destroy", it then answers the handshake and sends DestroyPod, so
 * hyperstart powers the guest off (the VMM must then exit on its own).
 * With "hello" (a guest restored from a snapshot, which said READY before
 * it was saved), it sends Hello at once and exits 0 when the answer came.
 * Usage: agentcat SOCKET TIMEOUT_SECONDS [destroy|hello] */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* One control frame: kind 0, stream 0, big-endian length, JSON. */
static int send_control(int fd, const char *json) {
  unsigned char h[9] = { 0 };
  size_t len = strlen(json);
  h[5] = len >> 24; h[6] = len >> 16; h[7] = len >> 8; h[8] = len;
  return write(fd, h, sizeof h) == (ssize_t)sizeof h && write(fd, json, len) == (ssize_t)len ? 0 : -1;
}

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: agentcat SOCKET TIMEOUT [destroy]\n"); return 2; }
  int destroy = argc > 3 && strcmp(argv[3], "destroy") == 0;
  int hello = argc > 3 && strcmp(argv[3], "hello") == 0;
  double t0 = now(), limit = atof(argv[2]);
  struct sockaddr_un a = { .sun_family = AF_UNIX };
  strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
  int fd = -1;
  while (now() - t0 < limit) {
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) break;
    close(fd); fd = -1; usleep(10000);
  }
  if (fd < 0) { printf("AGENTCAT-FAIL no socket after %.1fs\n", now() - t0); return 1; }
  printf("AGENTCAT connected +%.3fs\n", now() - t0); fflush(stdout);
  if (hello && send_control(fd, "{\"id\":1,\"request\":{\"hello\":{\"version\":2,\"capabilities\":[]}}}")) {
    printf("AGENTCAT-FAIL cannot send Hello\n"); return 1;
  }
  struct timeval tv = { .tv_sec = 1 };
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  static char seen[65536]; size_t n = 0;
  while (now() - t0 < limit) {
    char buf[4096];
    ssize_t r = read(fd, buf, sizeof buf);
    if (r == 0) { printf("AGENTCAT-FAIL closed +%.3fs\n", now() - t0); return 1; }
    if (r < 0) { if (errno == EAGAIN || errno == EINTR) continue; perror("read"); return 1; }
    for (ssize_t i = 0; i < r && n < sizeof seen - 1; i++) seen[n++] = (buf[i] >= 32 && buf[i] < 127) ? buf[i] : '.';
    seen[n] = 0;
    if (hello) {
      if (strstr(seen, "\"id\":1")) { printf("AGENT-HELLO +%.3fs: %.200s\n", now() - t0, seen); return 0; }
      continue;
    }
    if (strstr(seen, "\"ready\"") || strstr(seen, "ready")) {
      printf("AGENT-READY +%.3fs: %.200s\n", now() - t0, seen);
      if (!destroy) return 0;
      if (send_control(fd, "{\"id\":1,\"request\":{\"hello\":{\"version\":1,\"capabilities\":[]}}}") ||
          send_control(fd, "{\"id\":2,\"request\":\"destroy_pod\"}")) {
        printf("AGENTCAT-FAIL cannot send DestroyPod\n"); return 1;
      }
      printf("AGENTCAT destroy_pod sent +%.3fs\n", now() - t0); fflush(stdout);
      return 0;
    }
  }
  printf("AGENTCAT-FAIL timeout, got: %.300s\n", seen);
  return 1;
}
