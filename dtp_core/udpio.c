/* UDP runs for the UDP relays (dtp/hostid/udp): a run of datagrams leaves in as few
 * system calls as the kernel allows (sendmmsg), so that a burst costs one crossing of
 * the cffi boundary and one release of the interpreter lock, not one of each per
 * datagram, and datagrams of one size go down the stack together (UDP GSO). A send
 * waits as the socket's own mode says: a non-blocking one (an event loop's) never
 * waits, a datagram the kernel refuses is dropped, as UDP drops it; a blocking one (a
 * relay's thread) waits for room in its buffer, as send() does, the interpreter lock
 * released meanwhile. Python twin: dtp/native/reference/_udpio.py. */
#define _GNU_SOURCE

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "dtp_core.h"

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103 /* Linux 4.18: the datagram size of a segmented (GSO) send */
#endif
/* A segmented send: at most 64 segments (the kernel's UDP_MAX_SEGMENTS before 6.x) and
 * one UDP payload's bytes in all. */
#define GSO_MAX_SEGS 64
#define GSO_MAX_BYTES 65507
/* The largest datagram grouped: a segment must fit the device's MTU or the kernel
 * refuses the message (EINVAL), which would cost every call on a real interface a
 * failed message before its one-by-one sends; 1,400 bytes fit an Ethernet path with
 * IPv6 and a tunnel's header or two. Larger datagrams go one a message, as before. */
#define GSO_MAX_SEG_SIZE 1400

/* Whether fd takes a segmented send: a UDP socket (IPv4 or IPv6) of a kernel that knows
 * UDP_SEGMENT. Other sockets (a Unix datagram socket, an ICMP ping one) and older
 * kernels refuse the option here, where a send would ignore its control message and
 * send the whole buffer as one datagram. (Whether the option is there, not its value:
 * the answer is the socket's protocol's, for its life.) */
static int takes_gso(int fd) {
    int size = 0;
    socklen_t len = sizeof size;
    return getsockopt(fd, SOL_UDP, UDP_SEGMENT, &size, &len) == 0;
}

int dtp_udp_takes_gso(int fd) {
    if (fd < 0) return DTP_ERR_ARG;
    return takes_gso(fd);
}

/* How many datagrams from first (of the n left, offs as in dtp_udp_send_run) go as one
 * segmented send: those of the first one's size, the last of them perhaps shorter (but
 * not empty), within GSO_MAX_SEGS and GSO_MAX_BYTES. Below 2, none: they go alone. */
static size_t gso_group(const uint64_t *offs, size_t first, size_t n) {
    uint64_t size = offs[first + 1] - offs[first];
    uint64_t total = size;
    size_t count = 1;
    if (size == 0 || size > GSO_MAX_SEG_SIZE) return 1;
    while (first + count < n && count < GSO_MAX_SEGS) {
        uint64_t len = offs[first + count + 1] - offs[first + count];
        if (len == 0 || len > size || total + len > GSO_MAX_BYTES) break;
        total += len;
        count++;
        if (len < size) break; /* (a shorter one ends the group) */
    }
    return count;
}

int64_t dtp_udp_send_run(int fd, const uint8_t *data, size_t data_len, const uint64_t *offs,
                         size_t n, const uint8_t *addr, uint32_t addr_len, int gso,
                         uint64_t *sent_bytes, int *err) {
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
    size_t counts[DTP_UDP_RUN_MAX]; /* datagrams per message (more than 1: segmented) */
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } ctrl[DTP_UDP_RUN_MAX];
    /* Datagrams of one size to one address go as a segmented send (UDP GSO) where the
     * socket takes one: the kernel cuts the datagrams apart, a route lookup and a pass
     * down the stack for the group, not one each. Never as a call's first message: an
     * error the kernel reports on a send (an ICMP error it keeps for the next one, a
     * full buffer) then still drops that one datagram alone, the rest tried, as without;
     * one a segmented message meets later only ends the call's run there (sendmmsg
     * reports what went before it), and the rest go one by one. (The socket is asked
     * only when the caller does not know its answer: a system call per run.) */
    gso = n > 2 && (gso > 0 || (gso < 0 && takes_gso(fd)));
    int64_t sent = 0;
    size_t i = 0;
    while (i < n) {
        size_t k = n - i < DTP_UDP_RUN_MAX ? n - i : DTP_UDP_RUN_MAX;
        size_t m = 0;
        memset(msgs, 0, k * sizeof msgs[0]);
        for (size_t j = 0; j < k; m++) {
            size_t c = gso && j > 0 ? gso_group(offs, i + j, i + k) : 1;
            iov[m].iov_base = (void *)(data + offs[i + j]);
            iov[m].iov_len = (size_t)(offs[i + j + c] - offs[i + j]);
            msgs[m].msg_hdr.msg_iov = &iov[m];
            msgs[m].msg_hdr.msg_iovlen = 1;
            msgs[m].msg_hdr.msg_name = (void *)addr;
            msgs[m].msg_hdr.msg_namelen = addr_len;
            if (c > 1) {
                memset(&ctrl[m], 0, sizeof ctrl[m]);
                msgs[m].msg_hdr.msg_control = ctrl[m].buf;
                msgs[m].msg_hdr.msg_controllen = sizeof ctrl[m].buf;
                struct cmsghdr *cm = CMSG_FIRSTHDR(&msgs[m].msg_hdr);
                cm->cmsg_level = SOL_UDP;
                cm->cmsg_type = UDP_SEGMENT;
                cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
                uint16_t seg = (uint16_t)(offs[i + j + 1] - offs[i + j]);
                memcpy(CMSG_DATA(cm), &seg, sizeof seg);
            }
            counts[m] = c;
            j += c;
        }
        /* (no MSG_DONTWAIT: the socket's O_NONBLOCK decides whether a full buffer waits) */
        int r = sendmmsg(fd, msgs, (unsigned int)m, MSG_NOSIGNAL);
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
        for (int j = 0; j < r; j++) {
            *sent_bytes += msgs[j].msg_len;
            sent += (int64_t)counts[j];
            i += counts[j];
        }
        /* a segmented message refused (a device that cannot segment, a datagram over
         * its MTU, a full buffer): the rest of the call goes one datagram a message */
        if ((size_t)r < m && counts[r] > 1) gso = 0;
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

int64_t dtp_udp_same_source(const uint8_t *addrs, size_t addrs_cap, uint32_t addr_slot,
                            const uint32_t *addr_lens, size_t n) {
    if (n == 0) return 0;
    if (addrs == NULL || addr_lens == NULL || addr_slot == 0 || n > addrs_cap / addr_slot)
        return DTP_ERR_ARG;
    uint32_t len = addr_lens[0];
    if (len > addr_slot) return DTP_ERR_ARG;
    /* (a source's bytes alike are one source: the same tuple for recvfrom, flow label
     * and scope included, so a reader groups them without a look at each) */
    size_t k = 1;
    while (k < n && addr_lens[k] == len && memcmp(addrs + k * (size_t)addr_slot, addrs, len) == 0)
        k++;
    return (int64_t)k;
}
