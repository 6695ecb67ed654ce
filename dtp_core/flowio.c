/* The lent stream's carrier I/O: one call reads the carrier and takes the stream's
 * bytes (dtp_lane_recv), or seals and writes them (dtp_lane_send), so a small message
 * costs one crossing of the cffi boundary each way, plus a wait (dtp_wait_readable).
 * The socket stays non-blocking (other threads share it): the wait is a poll() that a
 * wake descriptor can interrupt. Python twins: dtp/native/reference/_lane.py. */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <poll.h>
#include <string.h>
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

static int credit_due(const dtp_flow *f) {
    return f->rx.offset > f->credit_offset || f->rx.conn_received > f->credit_conn;
}

int64_t dtp_lane_take(dtp_lane *L, size_t n, uint8_t *dst, size_t dst_cap) {
    if (L == NULL) return DTP_ERR_ARG;
    if (L->flow == NULL || L->recv == NULL || L->rbuf == NULL || L->pending >= L->rbuf_cap ||
        n > L->rbuf_cap - L->pending || (dst == NULL && dst_cap > 0)) {
        L->status = DTP_ERR_ARG;
        return DTP_ERR_ARG;
    }
    size_t end = (size_t)L->pending + n;
    L->end = end;
    dtp_flow *f = L->flow;
    int rc = dtp_flow_take(L->recv, f, L->rbuf, end, dst, dst_cap, L->scratch,
                           (size_t)L->scratch_cap, monotonic_now());
    if (rc < 0) { /* refused before taking anything: the pending bytes stay */
        L->status = rc;
        return rc;
    }
    if (rc == DTP_OK || rc == DTP_NEED_MORE || rc == DTP_DUE) {
        /* all taken, perhaps up to a record the carrier has only begun to bring: its
         * bytes wait at the start of rbuf for the rest */
        size_t used = (size_t)f->rx.consumed, left = end - used;
        if (left > 0 && used > 0) memmove(L->rbuf, L->rbuf + used, left);
        L->pending = left;
        if (rc != DTP_DUE && !credit_due(f)) {
            L->status = rc;
            return (int64_t)f->rx.taken;
        }
        L->status = DTP_DUE; /* the bytes are taken, but the connection owes credit */
        return 0;
    }
    /* the general path's turn: it gets everything not taken, pending bytes included */
    L->pending = 0;
    L->status = rc;
    return 0;
}

int64_t dtp_lane_recv(dtp_lane *L, int fd, uint8_t *dst, size_t dst_cap) {
    if (L == NULL) return DTP_ERR_ARG;
    L->got = 0;
    L->err = 0;
    L->end = L->pending;
    if (fd < 0 || L->rbuf == NULL || L->pending >= L->rbuf_cap) {
        L->status = DTP_ERR_ARG;
        return DTP_ERR_ARG;
    }
    ssize_t n = recv(fd, L->rbuf + L->pending, (size_t)(L->rbuf_cap - L->pending), MSG_DONTWAIT);
    if (n <= 0) {
        if (n == 0) {
            L->status = DTP_EOF;
            return 0;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            L->status = DTP_WAIT;
            return 0;
        }
        L->err = errno;
        L->status = DTP_ERR_IO;
        return DTP_ERR_IO;
    }
    L->got = (uint64_t)n;
    return dtp_lane_take(L, (size_t)n, dst, dst_cap);
}

int64_t dtp_lane_send(dtp_lane *L, int fd, const uint8_t *data, size_t len) {
    if (L == NULL) return DTP_ERR_ARG;
    L->sent = 0;
    L->err = 0;
    if (fd < 0 || L->flow == NULL) return DTP_ERR_ARG;
    dtp_flow *f = L->flow;
    int rc = dtp_flow_seal(L->send, f, data, len, (size_t)L->max_chunk, L->out,
                           (size_t)L->out_cap, monotonic_now());
    if (rc != DTP_OK) return rc == DTP_STOP ? 0 : rc;
    const uint8_t *out = L->out;
    size_t sent = 0, written = (size_t)f->written;
    while (sent < written) {
        ssize_t n = send(fd, out + sent, written - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            L->sent = sent;
            L->err = errno;
            return DTP_ERR_IO;
        }
        sent += (size_t)n;
    }
    L->sent = sent;
    return sent == written ? (int64_t)f->taken : DTP_ERR_QUEUE;
}
