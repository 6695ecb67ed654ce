/* The lent stream's carrier I/O: one call reads the carrier and takes the stream's
 * bytes (dtp_flow_read), or seals and writes them (dtp_flow_send), so a small message
 * costs one crossing of the cffi boundary each way, plus a wait (dtp_wait_readable).
 * The socket stays non-blocking (other threads share it): the wait is a poll() that a
 * wake descriptor can interrupt. Python twins: dtp/_reference/lane.py. */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>

#include "dtp_core.h"

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif

static double monotonic_now(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) return 0.0;
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int dtp_wait_readable(int fd, int wake_fd, int timeout_ms, int *err) {
    if (fd < 0 || err == NULL) return DTP_ERR_ARG;
    *err = 0;
    struct pollfd fds[2] = {{.fd = fd, .events = POLLIN, .revents = 0},
                            {.fd = wake_fd, .events = POLLIN, .revents = 0}};
    int r = poll(fds, wake_fd >= 0 ? 2 : 1, timeout_ms < 0 ? -1 : timeout_ms);
    if (r < 0) {
        if (errno == EINTR) return DTP_WAIT;
        *err = errno;
        return DTP_ERR_IO;
    }
    if (r == 0) return DTP_WAIT;
    if (wake_fd >= 0 && fds[1].revents != 0) return DTP_WAKE;
    return DTP_READY;
}

int dtp_flow_read(dtp_aead *ctx, dtp_flow *f, dtp_io *io, int fd, uint8_t *rbuf,
                  size_t rbuf_cap, uint8_t *dst, size_t dst_cap, uint8_t *scratch,
                  size_t scratch_cap) {
    if (ctx == NULL || f == NULL || io == NULL || fd < 0 || rbuf == NULL || rbuf_cap == 0 ||
        (dst == NULL && dst_cap > 0))
        return DTP_ERR_ARG;
    io->got = io->sent = 0;
    io->err = 0;
    ssize_t n = recv(fd, rbuf, rbuf_cap, MSG_DONTWAIT);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return DTP_WAIT;
        io->err = errno;
        return DTP_ERR_IO;
    }
    if (n == 0) return DTP_EOF;
    io->got = (uint64_t)n;
    return dtp_flow_take(ctx, f, rbuf, (size_t)n, dst, dst_cap, scratch, scratch_cap,
                         monotonic_now());
}

int dtp_flow_send(dtp_aead *ctx, dtp_flow *f, dtp_io *io, int fd, const uint8_t *data,
                  size_t len, size_t max_chunk, uint8_t *out, size_t out_cap, double now) {
    if (io == NULL || fd < 0) return DTP_ERR_ARG;
    io->got = io->sent = 0;
    io->err = 0;
    int rc = dtp_flow_seal(ctx, f, data, len, max_chunk, out, out_cap, now);
    if (rc != DTP_OK) return rc;
    size_t sent = 0;
    while (sent < f->written) {
        ssize_t n = send(fd, out + sent, f->written - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            io->sent = sent;
            io->err = errno;
            return DTP_ERR_IO;
        }
        sent += (size_t)n;
    }
    io->sent = sent;
    return DTP_OK;
}
