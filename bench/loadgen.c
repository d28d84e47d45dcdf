/*
 * loadgen: the benchmarks' load generator in C, doing as little per connection as it can,
 * so that it drives fast servers (pre-forked, pooled) further than a Python client could.
 *
 * One thread, epoll (edge-triggered), non-blocking sockets. For a window of --duration
 * seconds it keeps --clients connections in flight against --host:--port; each one:
 * connect, send one line, optionally shutdown(SHUT_WR) (--shut-wr), read until the echoed
 * line is complete (--until-newline, the default) or until the server closes (--until-eof),
 * close. A connection is a success when exactly the line came back. Connections still in
 * flight when the window ends may finish (or time out): they count for latency and errors,
 * not for conn/s. A run therefore never lasts more than duration + timeout.
 *
 * Per connection it makes the fewest system calls it can: socket, connect, send (at once:
 * on loopback the handshake is usually over when connect() returns), epoll_ctl, recv,
 * close; epoll_wait serves many. What remains is the kernel's: on loopback, the TCP work of
 * every packet the client sends (the handshake, the server side's new socket, the close)
 * runs on the client's CPU, and that, not this program, is what limits it.
 *
 * Latency runs from just before connect() to the moment the answer is complete, in
 * microseconds. Percentiles are nearest-rank, as in bench/common.py's Python generator.
 * Errors are counted by kind: refused, reset (ECONNRESET, EPIPE), timeout (the
 * per-connection --timeout, or ETIMEDOUT), eof (closed before the line was back),
 * mismatch (other bytes came back), or the errno's name (EADDRNOTAVAIL, EMFILE, ...).
 *
 * With --udp it sends datagrams instead (bench/udp.py): each of the --clients is one UDP
 * socket of its own (its own source port), connected to --host:--port (IPv4 or IPv6), kept
 * for the whole run. It sends one datagram, an 8-digit hexadecimal sequence number and the
 * line, and waits for the same bytes back; then sends the next. An answer that does not
 * come within --timeout is a loss (counted as a timeout) and the client sends the next;
 * an answer that comes after its timeout (another sequence number) is ignored. Latency
 * runs from send() to the answer; "completed" counts answers.
 *
 * Prints one JSON object on stdout. Exit status: 0 after a run (errors are results, not
 * failures), 2 on a usage error, 1 when the generator itself cannot work.
 *
 * Built by bench/common.py: gcc -O2 -Wall -Wextra -Werror -o loadgen loadgen.c
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 256
#define MAX_LINE 4096
#define SEQ_DIGITS 8 /* --udp: each datagram starts with its sequence number, in hexadecimal */
#define MAX_ERRNO 256
#define RETRY_NS 1000000 /* after a connect() that failed at once: try again within 1 ms */

enum stage { SENDING, READING, DONE };

enum special_error { ERR_NONE = 0, ERR_TIMEOUT = -1, ERR_EOF = -2, ERR_MISMATCH = -3 };

/* One connection in flight; active connections form a list in start order, so the head
 * always has the nearest deadline (every connection has the same timeout). */
struct conn {
    int fd;
    enum stage stage;
    uint32_t seq;   /* --udp: the sequence number of the datagram awaited */
    char *datagram; /* --udp: what was sent, and must come back */
    size_t sent;
    size_t received;
    uint64_t started_ns;
    uint64_t deadline_ns;
    struct conn *prev;
    struct conn *next;
};

struct options {
    struct sockaddr_storage address;
    socklen_t address_len;
    int udp;
    long clients;
    double duration;
    double timeout;
    const char *line;
    size_t line_len;
    int shut_wr;
    int until_eof;
    int cpu;
};

struct results {
    uint64_t completed;
    uint64_t completed_in_window;
    uint64_t in_flight_at_end;
    uint64_t refused;
    uint64_t reset;
    uint64_t timeout;
    uint64_t eof;
    uint64_t mismatch;
    uint64_t by_errno[MAX_ERRNO]; /* other errors, by errno */
    uint32_t *latencies_us;
    size_t latencies_len;
    size_t latencies_cap;
};

static struct options opts;
static struct results res;
static struct conn *slots;      /* opts.clients of them */
static struct conn *free_list;  /* singly linked through next */
static struct conn *head, *tail; /* active, in start order */
static long active;
static int epfd;
static uint64_t window_end_ns;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static double cpu_seconds(void)
{
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return (double)(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
           (double)(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

static void die(const char *what)
{
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void record_latency(uint64_t elapsed_ns)
{
    if (res.latencies_len == res.latencies_cap) {
        size_t cap = res.latencies_cap ? 2 * res.latencies_cap : 65536;
        uint32_t *grown = realloc(res.latencies_us, cap * sizeof *grown);
        if (grown == NULL)
            die("realloc");
        res.latencies_us = grown;
        res.latencies_cap = cap;
    }
    uint64_t us = elapsed_ns / 1000;
    res.latencies_us[res.latencies_len++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

static void count_error(int error)
{
    switch (error) {
    case ECONNREFUSED:
        res.refused++;
        break;
    case ECONNRESET:
    case EPIPE:
        res.reset++;
        break;
    case ETIMEDOUT:
    case ERR_TIMEOUT:
        res.timeout++;
        break;
    case ERR_EOF:
        res.eof++;
        break;
    case ERR_MISMATCH:
        res.mismatch++;
        break;
    default:
        res.by_errno[error > 0 && error < MAX_ERRNO ? error : 0]++;
    }
}

static void unlink_active(struct conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        tail = c->prev;
    active--;
}

/* Close `c`: a success when `error` is ERR_NONE, else count the error. */
static void finish(struct conn *c, int error)
{
    uint64_t finished = now_ns();
    if (!opts.udp)
        close(c->fd); /* also removes it from the epoll set; --udp keeps its socket */
    c->stage = DONE;
    unlink_active(c);
    c->next = free_list;
    free_list = c;
    if (error != ERR_NONE) {
        count_error(error);
        return;
    }
    record_latency(finished - c->started_ns);
    res.completed++;
    if (finished <= window_end_ns)
        res.completed_in_window++;
}

static void try_send(struct conn *c)
{
    while (c->sent < opts.line_len) {
        ssize_t n = send(c->fd, opts.line + c->sent, opts.line_len - c->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return; /* the next EPOLLOUT edge resumes */
            finish(c, errno);
            return;
        }
        c->sent += (size_t)n;
    }
    if (opts.shut_wr && shutdown(c->fd, SHUT_WR) < 0) {
        finish(c, errno);
        return;
    }
    c->stage = READING;
}

/* Read what is there (edge-triggered: until EAGAIN), and finish `c` when it is over. */
static void try_read(struct conn *c)
{
    char buf[MAX_LINE];
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                finish(c, errno);
            return;
        }
        if (n == 0) {
            finish(c, c->received == opts.line_len ? ERR_NONE
                      : opts.until_eof             ? ERR_MISMATCH
                                                   : ERR_EOF);
            return;
        }
        if (c->received + (size_t)n > opts.line_len ||
            memcmp(buf, opts.line + c->received, (size_t)n) != 0) {
            finish(c, ERR_MISMATCH);
            return;
        }
        c->received += (size_t)n;
        if (c->received == opts.line_len && !opts.until_eof) {
            finish(c, ERR_NONE);
            return;
        }
    }
}

/* --udp: read the datagrams there; the one awaited finishes `c`, others are stale. */
static void try_read_udp(struct conn *c)
{
    char buf[MAX_LINE + SEQ_DIGITS];
    size_t len = SEQ_DIGITS + opts.line_len;
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (c->stage == READING)
                finish(c, errno); /* ECONNREFUSED: nothing listens there */
            return;
        }
        if (c->stage == READING && (size_t)n == len && memcmp(buf, c->datagram, len) == 0) {
            finish(c, ERR_NONE);
            return;
        }
    }
}

/* --udp: send the next datagram of the idle client `c`; returns 0 when it failed at once. */
static int send_udp(struct conn *c)
{
    c->seq++;
    char seq[SEQ_DIGITS + 1];
    snprintf(seq, sizeof seq, "%08x", (unsigned)c->seq);
    memcpy(c->datagram, seq, SEQ_DIGITS);
    memcpy(c->datagram + SEQ_DIGITS, opts.line, opts.line_len);
    c->started_ns = now_ns();
    c->deadline_ns = c->started_ns + (uint64_t)(opts.timeout * 1e9);
    if (send(c->fd, c->datagram, SEQ_DIGITS + opts.line_len, 0) < 0) {
        count_error(errno);
        c->next = free_list;
        free_list = c;
        return 0;
    }
    c->stage = READING;
    c->prev = tail;
    c->next = NULL;
    if (tail)
        tail->next = c;
    else
        head = c;
    tail = c;
    active++;
    return 1;
}

/* --udp: open every client's socket (its own source port), connected, in the epoll set. */
static void open_udp_clients(void)
{
    for (long i = 0; i < opts.clients; i++) {
        struct conn *c = &slots[i];
        c->datagram = malloc(SEQ_DIGITS + opts.line_len);
        if (c->datagram == NULL)
            die("malloc");
        c->fd = socket(opts.address.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0)
            die("socket");
        if (connect(c->fd, (struct sockaddr *)&opts.address, opts.address_len) < 0)
            die("connect");
        c->stage = DONE;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
            die("epoll_ctl");
    }
}

static void on_event(struct conn *c, uint32_t events)
{
    if (opts.udp) {
        try_read_udp(c);
        return;
    }
    if (c->stage == SENDING) {
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return;
        try_send(c); /* a failed connect() shows here, as send()'s error */
        if (c->stage != READING)
            return; /* finished, or waiting to send the rest */
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP))
        try_read(c);
}

/* Start one connection in a free slot; returns 0 when it failed at once. */
static int open_one(void)
{
    struct conn *c = free_list;
    free_list = c->next;
    if (opts.udp)
        return send_udp(c);
    int fd = socket(opts.address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        count_error(errno);
        goto failed;
    }
    c->fd = fd;
    c->sent = c->received = 0;
    c->started_ns = now_ns();
    c->deadline_ns = c->started_ns + (uint64_t)(opts.timeout * 1e9);
    if (connect(fd, (struct sockaddr *)&opts.address, opts.address_len) < 0 &&
        errno != EINPROGRESS) {
        count_error(errno);
        close(fd);
        goto failed;
    }
    c->prev = tail;
    c->next = NULL;
    if (tail)
        tail->next = c;
    else
        head = c;
    tail = c;
    active++;
    /* On loopback the handshake has usually completed inside connect(): send at once, and
     * wait for EPOLLOUT only if the socket is still connecting (send() says EAGAIN). */
    c->stage = SENDING;
    try_send(c);
    if (c->stage == DONE)
        return 0; /* failed at once (counted); the slot is free again */
    uint32_t events = EPOLLIN | EPOLLRDHUP | EPOLLET | (c->stage == SENDING ? EPOLLOUT : 0);
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        die("epoll_ctl");
    return 1;
failed:
    c->next = free_list;
    free_list = c;
    return 0;
}

static int compare_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static double rank_ms(double q)
{
    if (res.latencies_len == 0)
        return 0.0;
    double exact = q * (double)res.latencies_len;
    size_t index = (size_t)exact;
    if ((double)index < exact)
        index++; /* the ceiling: nearest rank */
    return res.latencies_us[index > 0 ? index - 1 : 0] / 1000.0;
}

static void print_json(double elapsed, double cpu)
{
    qsort(res.latencies_us, res.latencies_len, sizeof *res.latencies_us, compare_u32);
    printf("{\"clients\": %ld, \"window_s\": %.6f, \"elapsed_s\": %.6f, ", opts.clients,
           opts.duration, elapsed);
    printf("\"completed\": %llu, \"completed_in_window\": %llu, \"conn_per_s\": %.1f, ",
           (unsigned long long)res.completed, (unsigned long long)res.completed_in_window,
           (double)res.completed_in_window / opts.duration);
    printf("\"p50_ms\": %.3f, \"p99_ms\": %.3f, \"max_ms\": %.3f, ", rank_ms(0.50),
           rank_ms(0.99), rank_ms(1.0));
    printf("\"errors\": {\"refused\": %llu, \"reset\": %llu, \"timeout\": %llu",
           (unsigned long long)res.refused, (unsigned long long)res.reset,
           (unsigned long long)res.timeout);
    if (res.eof)
        printf(", \"eof\": %llu", (unsigned long long)res.eof);
    if (res.mismatch)
        printf(", \"mismatch\": %llu", (unsigned long long)res.mismatch);
    for (int e = 0; e < MAX_ERRNO; e++) {
        if (res.by_errno[e]) {
            const char *name = e ? strerrorname_np(e) : NULL;
            printf(", \"%s%s\": %llu", name ? name : "errno", name ? "" : "?",
                   (unsigned long long)res.by_errno[e]);
        }
    }
    printf("}, \"in_flight_at_end\": %llu, \"cpu_s\": %.6f, \"busy\": %.4f}\n",
           (unsigned long long)res.in_flight_at_end, cpu, elapsed > 0 ? cpu / elapsed : 0.0);
}

static void run(void)
{
    struct epoll_event events[MAX_EVENTS];
    double cpu_start = cpu_seconds();
    uint64_t start = now_ns();
    int window_open = 1;
    window_end_ns = start + (uint64_t)(opts.duration * 1e9);
    for (;;) {
        uint64_t now = now_ns();
        while (head && head->deadline_ns <= now)
            finish(head, ERR_TIMEOUT);
        int failed = 0;
        if (now < window_end_ns) {
            /* Once per free slot: a connect() refused at once must not spin here. */
            for (long free_slots = opts.clients - active; free_slots > 0; free_slots--)
                failed += !open_one();
        } else {
            if (window_open) {
                res.in_flight_at_end = (uint64_t)active;
                window_open = 0;
            }
            if (!active)
                break;
        }
        uint64_t wait = now < window_end_ns ? window_end_ns - now
                                            : (uint64_t)(opts.timeout * 1e9);
        if (head && head->deadline_ns - now < wait)
            wait = head->deadline_ns - now; /* > 0: the expired ones are gone */
        if (failed && wait > RETRY_NS)
            wait = RETRY_NS;
        int ms = (int)((wait + 999999) / 1000000);
        int n = epoll_wait(epfd, events, MAX_EVENTS, ms);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++)
            on_event(events[i].data.ptr, events[i].events);
    }
    double elapsed = (double)(now_ns() - start) / 1e9;
    print_json(elapsed, cpu_seconds() - cpu_start);
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: loadgen --port PORT [--host ADDR] [--clients N] [--duration S]\n"
            "               [--timeout S] [--line TEXT] [--shut-wr]\n"
            "               [--until-newline | --until-eof] [--udp] [--cpu N]\n"
            "Keeps N connections in flight against ADDR:PORT (default 127.0.0.1) for S\n"
            "seconds (default 1); each sends TEXT and a newline (default 'hello sockd'),\n"
            "optionally half-closes, and reads until the line is back (default) or until\n"
            "EOF. With --udp, N UDP clients, each with one datagram in flight (a sequence\n"
            "number and the line) until it comes back or times out. Prints one JSON object.\n");
}

static int parse_number(const char *text, double low, double high, double *out)
{
    char *end;
    errno = 0;
    double value = strtod(text, &end);
    if (errno || end == text || *end || !(value >= low && value <= high))
        return 0;
    *out = value;
    return 1;
}

static void parse_options(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"host", required_argument, NULL, 'h'},
        {"port", required_argument, NULL, 'p'},
        {"clients", required_argument, NULL, 'c'},
        {"duration", required_argument, NULL, 'd'},
        {"timeout", required_argument, NULL, 't'},
        {"line", required_argument, NULL, 'l'},
        {"shut-wr", no_argument, NULL, 's'},
        {"until-eof", no_argument, NULL, 'e'},
        {"until-newline", no_argument, NULL, 'n'},
        {"cpu", required_argument, NULL, 'u'},
        {"udp", no_argument, NULL, 'U'},
        {"help", no_argument, NULL, 'H'},
        {NULL, 0, NULL, 0},
    };
    const char *host = "127.0.0.1";
    const char *line = "hello sockd";
    double port = -1, clients = 1, cpu = -1;
    opts.duration = 1.0;
    opts.timeout = 5.0;
    int option, ok = 1;
    while ((option = getopt_long(argc, argv, "", long_options, NULL)) != -1) {
        switch (option) {
        case 'h': host = optarg; break;
        case 'p': ok &= parse_number(optarg, 1, 65535, &port); break;
        case 'c': ok &= parse_number(optarg, 1, 1000000, &clients); break;
        case 'd': ok &= parse_number(optarg, 0.001, 86400, &opts.duration); break;
        case 't': ok &= parse_number(optarg, 0.001, 3600, &opts.timeout); break;
        case 'l': line = optarg; break;
        case 's': opts.shut_wr = 1; break;
        case 'e': opts.until_eof = 1; break;
        case 'n': opts.until_eof = 0; break;
        case 'u': ok &= parse_number(optarg, 0, CPU_SETSIZE - 1, &cpu); break;
        case 'U': opts.udp = 1; break;
        case 'H': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (!ok || optind != argc || port < 0 || strlen(line) + 1 > MAX_LINE - SEQ_DIGITS) {
        fprintf(stderr, "loadgen: bad or missing option (--port is required)\n");
        usage(stderr);
        exit(2);
    }
    struct sockaddr_in *v4 = (struct sockaddr_in *)&opts.address;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&opts.address;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        opts.address_len = sizeof *v4;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        opts.address_len = sizeof *v6;
    } else {
        fprintf(stderr, "loadgen: --host: not an IPv4 or IPv6 address: %s\n", host);
        exit(2);
    }
    opts.clients = (long)clients;
    opts.cpu = (int)cpu;
    size_t len = strlen(line);
    char *full = malloc(len + 2);
    if (full == NULL)
        die("malloc");
    memcpy(full, line, len);
    full[len] = '\n';
    full[len + 1] = '\0';
    opts.line = full;
    opts.line_len = len + 1;
}

int main(int argc, char **argv)
{
    parse_options(argc, argv);
    if (opts.cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(opts.cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0)
            die("sched_setaffinity");
    }
    /* Every client needs a descriptor: raise the soft limit to the hard one if short. */
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < (rlim_t)opts.clients + 16) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
    }
    slots = calloc((size_t)opts.clients, sizeof *slots);
    if (slots == NULL)
        die("calloc");
    for (long i = opts.clients - 1; i >= 0; i--) {
        slots[i].next = free_list;
        free_list = &slots[i];
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1");
    if (opts.udp)
        open_udp_clients();
    run();
    return 0;
}
