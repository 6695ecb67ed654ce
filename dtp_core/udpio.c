/* UDP runs for the UDP relays (dtp/hostid/udp): a run of datagrams leaves in as few
 * system calls as the kernel allows (sendmmsg), so that a burst costs one crossing of
 * the cffi boundary and one release of the interpreter lock, not one of each per
 * datagram. The socket stays non-blocking (the event loop owns it): a datagram the
 * kernel refuses is dropped, as UDP drops it. Python twin: dtp/native/reference/_udpio.py. */
#define _GNU_SOURCE

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "dtp_core.h"

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif

int64_t dtp_udp_send_run(int fd, const uint8_t *data, size_t data_len, const uint64_t *offs,
                         size_t n, const uint8_t *addr, uint32_t addr_len, uint64_t *sent_bytes,
                         int *err) {
    if (fd < 0 || err == NULL || sent_bytes == NULL || (n > 0 && (data == NULL || offs == NULL)) ||
        (addr == NULL && addr_len != 0) || addr_len > sizeof(struct sockaddr_storage))
        return DTP_ERR_ARG;
    *err = 0;
    *sent_bytes = 0;
    for (size_t i = 0; i < n; i++)
        if (offs[i + 1] < offs[i]) return DTP_ERR_ARG;
    if (n > 0 && offs[n] > data_len) return DTP_ERR_ARG; /* (ascending: all inside data) */
    struct mmsghdr msgs[DTP_UDP_RUN_MAX];
    struct iovec iov[DTP_UDP_RUN_MAX];
    int64_t sent = 0;
    size_t i = 0;
    while (i < n) {
        size_t k = n - i < DTP_UDP_RUN_MAX ? n - i : DTP_UDP_RUN_MAX;
        memset(msgs, 0, k * sizeof msgs[0]);
        for (size_t j = 0; j < k; j++) {
            iov[j].iov_base = (void *)(data + offs[i + j]);
            iov[j].iov_len = (size_t)(offs[i + j + 1] - offs[i + j]);
            msgs[j].msg_hdr.msg_iov = &iov[j];
            msgs[j].msg_hdr.msg_iovlen = 1;
            msgs[j].msg_hdr.msg_name = (void *)addr;
            msgs[j].msg_hdr.msg_namelen = addr_len;
        }
        int r = sendmmsg(fd, msgs, (unsigned int)k, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (r < 0) {
            if (errno == EINTR) continue;
            /* the first of them was refused: dropped, the rest still tried */
            *err = errno;
            i++;
            continue;
        }
        if (r == 0) { /* (none taken and no errno: the first counts as refused, so the
                       * loop always moves on) */
            i++;
            continue;
        }
        sent += r;
        for (int j = 0; j < r; j++) *sent_bytes += msgs[j].msg_len;
        i += (size_t)r;
    }
    return sent;
}

int64_t dtp_udp_recv_run(int fd, uint8_t *buf, size_t buf_cap, size_t slot, size_t max,
                         uint32_t *lens, uint8_t *addrs, size_t addrs_cap, uint32_t addr_slot,
                         uint32_t *addr_lens, int *err) {
    if (fd < 0 || err == NULL || max > DTP_UDP_RUN_MAX || (max > 0 && (buf == NULL || lens == NULL)) ||
        slot == 0 || slot > UINT32_MAX || (addrs != NULL && (addr_lens == NULL || addr_slot == 0)))
        return DTP_ERR_ARG;
    /* (max <= 64 and slot, addr_slot < 2^32: the products cannot overflow) */
    if (max * slot > buf_cap || (addrs != NULL && max * (size_t)addr_slot > addrs_cap))
        return DTP_ERR_ARG;
    *err = 0;
    if (max == 0) return 0;
    struct mmsghdr msgs[DTP_UDP_RUN_MAX];
    struct iovec iov[DTP_UDP_RUN_MAX];
    memset(msgs, 0, max * sizeof msgs[0]);
    for (size_t j = 0; j < max; j++) {
        iov[j].iov_base = buf + j * slot;
        iov[j].iov_len = slot;
        msgs[j].msg_hdr.msg_iov = &iov[j];
        msgs[j].msg_hdr.msg_iovlen = 1;
        if (addrs != NULL) {
            msgs[j].msg_hdr.msg_name = addrs + j * addr_slot;
            msgs[j].msg_hdr.msg_namelen = addr_slot;
        }
    }
    int r;
    do {
        r = recvmmsg(fd, msgs, (unsigned int)max, MSG_DONTWAIT, NULL);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        *err = errno;
        return DTP_ERR_IO;
    }
    for (int j = 0; j < r; j++) {
        lens[j] = msgs[j].msg_len;
        if (addrs != NULL) addr_lens[j] = msgs[j].msg_hdr.msg_namelen;
    }
    return r;
}
