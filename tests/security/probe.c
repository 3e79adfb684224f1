/*
 * probe: raw-syscall attacks for the containment suite (tests/security).
 *
 *     probe <case> [args...]
 *
 * Prints exactly one line, "ret=<r> errno=<n>" (errno 0 when the call succeeded), unless
 * the case says otherwise (spin: "cpu_ms=<n>"). Numbers are parsed with strtoull base 0,
 * so 0x... works and bits above 32 reach the kernel untouched (the point of the "high
 * bits" variants: the kernel truncates int arguments, a filter must too). Only the raw
 * syscall(2) wrapper is used, so nothing in libc can refuse, retry or fall back first.
 *
 * Cases:
 *   sys NR [a0..a5]        syscall(NR, a0..a5)
 *   clone FLAGS            raw clone(FLAGS | SIGCHLD); a child _exit(0)s, the parent reaps
 *                          it; ret = child pid (>0) on success
 *   clone3 FLAGS           clone3 with a real struct clone_args {flags, exit_signal=SIGCHLD}
 *   x32 NR                 syscall NR with the x32 bit (0x40000000); ret if not killed
 *   int80 NR               i386 ABI: int 0x80 with eax=NR (args 0)
 *   ptrace-attach PID      PTRACE_ATTACH
 *   open PATH MODE         open(PATH, r|w|rw|creat|dir); ret = fd
 *   write PATH             open(PATH, O_WRONLY|O_CREAT|O_TRUNC, 0644) then write "x"
 *   fill PATH CHUNK        create PATH and write CHUNK-byte blocks until a write fails;
 *                          ret = bytes written in total, errno = the failing write's
 *   fdbomb                 open("/dev/null") until it fails; ret = fds opened
 *   setrlimit RES VALUE    setrlimit(RES, {VALUE, VALUE}) (soft = hard = VALUE)
 *   kill PID SIG           kill(2)
 *   connect-inet PORT      TCP connect to 127.0.0.1:PORT
 *   connect-abstract NAME  AF_UNIX SOCK_STREAM connect to the abstract name "\0NAME"
 *   pids                   "pids=<comma list>" of the numeric entries of /proc
 *   fds                    "fds=<comma list>" of the entries of /proc/self/fd
 *   spin MS                burn CPU until MS ms of wall clock passed; prints "cpu_ms=<n>"
 *                          (CLOCK_PROCESS_CPUTIME_ID)
 *   daemon MS [TAG]        double fork + setsid; the grandchild closes 0-2 and sleeps MS ms
 *                          (TAG only marks its argv for the host to find); the caller
 *                          returns at once, ret = grandchild pid
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_clone3
#define SYS_clone3 435
#endif

static unsigned long num(const char *s) { return strtoull(s, NULL, 0); }

static int report(long ret, int err) {
    printf("ret=%ld errno=%d\n", ret, ret < 0 ? err : 0);
    return 0;
}

static int usage(void) {
    fprintf(stderr, "usage: probe <case> [args]; see probe.c\n");
    return 2;
}

static long reap_if_child(long ret) {
    if (ret == 0)
        _exit(0); /* the child of a successful clone */
    if (ret > 0)
        waitpid((pid_t)ret, NULL, __WALL);
    return ret;
}

/* readdir order is not numeric: print sorted so tests can compare exactly */
static int list_sorted(const char *name, const char *path) {
    DIR *d = opendir(path);
    if (d == NULL)
        return report(-1, errno);
    int dfd = dirfd(d);
    long vals[4096];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < 4096) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        long v = atol(e->d_name);
        if (strcmp(name, "fds") == 0 && v == dfd)
            continue;
        vals[n++] = v;
    }
    closedir(d);
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && vals[j - 1] > vals[j]; j--) {
            long t = vals[j];
            vals[j] = vals[j - 1];
            vals[j - 1] = t;
        }
    printf("%s=", name);
    for (int i = 0; i < n; i++)
        printf("%s%ld", i ? "," : "", vals[i]);
    printf("\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2)
        return usage();
    const char *c = argv[1];
    setvbuf(stdout, NULL, _IOLBF, 0);

    if (strcmp(c, "sys") == 0 && argc >= 3) {
        unsigned long a[6] = {0};
        for (int i = 0; i < 6 && 3 + i < argc; i++)
            a[i] = num(argv[3 + i]);
        errno = 0;
        long r = syscall((long)num(argv[2]), a[0], a[1], a[2], a[3], a[4], a[5]);
        return report(r, errno);
    }
    if (strcmp(c, "clone") == 0 && argc == 3) {
        errno = 0;
        long r = syscall(SYS_clone, num(argv[2]) | SIGCHLD, 0UL, 0UL, 0UL, 0UL);
        int err = errno;
        return report(reap_if_child(r), err);
    }
    if (strcmp(c, "clone3") == 0 && argc == 3) {
        uint64_t args[11] = {0}; /* struct clone_args, CLONE_ARGS_SIZE_VER2 */
        args[0] = num(argv[2]);  /* flags */
        args[4] = SIGCHLD;       /* exit_signal */
        errno = 0;
        long r = syscall(SYS_clone3, args, sizeof args);
        int err = errno;
        return report(reap_if_child(r), err);
    }
    if (strcmp(c, "x32") == 0 && argc == 3) {
        errno = 0;
        long r = syscall((long)(num(argv[2]) | 0x40000000UL), 0UL, 0UL, 0UL);
        return report(r, errno);
    }
    if (strcmp(c, "int80") == 0 && argc == 3) {
        long r = (long)num(argv[2]);
        __asm__ volatile("int $0x80" : "+a"(r) : "b"(0), "c"(0), "d"(0) : "memory");
        return report(r < 0 && r > -4096 ? -1 : r, r < 0 && r > -4096 ? (int)-r : 0);
    }
    if (strcmp(c, "ptrace-attach") == 0 && argc == 3) {
        errno = 0;
        long r = syscall(SYS_ptrace, 16L /* PTRACE_ATTACH */, (long)num(argv[2]), 0L, 0L);
        return report(r, errno);
    }
    if (strcmp(c, "open") == 0 && argc == 4) {
        int flags = O_RDONLY;
        const char *m = argv[3];
        if (strcmp(m, "w") == 0)
            flags = O_WRONLY;
        else if (strcmp(m, "rw") == 0)
            flags = O_RDWR;
        else if (strcmp(m, "creat") == 0)
            flags = O_WRONLY | O_CREAT | O_TRUNC;
        else if (strcmp(m, "dir") == 0)
            flags = O_RDONLY | O_DIRECTORY;
        errno = 0;
        long r = syscall(SYS_openat, (long)AT_FDCWD, argv[2], (long)(flags | O_CLOEXEC), 0644L);
        return report(r, errno);
    }
    if (strcmp(c, "write") == 0 && argc == 3) {
        errno = 0;
        long fd = syscall(SYS_openat, (long)AT_FDCWD, argv[2], (long)(O_WRONLY | O_CREAT | O_TRUNC), 0644L);
        if (fd < 0)
            return report(fd, errno);
        long r = syscall(SYS_write, fd, "x", 1L);
        return report(r, errno);
    }
    if (strcmp(c, "fill") == 0 && argc == 4) {
        size_t chunk = num(argv[3]);
        char *buf = calloc(1, chunk);
        long fd = syscall(SYS_openat, (long)AT_FDCWD, argv[2], (long)(O_WRONLY | O_CREAT | O_TRUNC), 0644L);
        if (buf == NULL || fd < 0)
            return report(-1, errno);
        long total = 0;
        for (;;) {
            errno = 0;
            long w = syscall(SYS_write, fd, buf, (long)chunk);
            if (w <= 0) {
                printf("ret=%ld errno=%d\n", total, w < 0 ? errno : 0);
                return 0;
            }
            total += w;
        }
    }
    if (strcmp(c, "fdbomb") == 0 && argc == 2) {
        long n = 0;
        for (;;) {
            errno = 0;
            long fd = syscall(SYS_openat, (long)AT_FDCWD, "/dev/null", (long)O_RDONLY, 0L);
            if (fd < 0) {
                printf("ret=%ld errno=%d\n", n, errno);
                return 0;
            }
            n++;
        }
    }
    if (strcmp(c, "setrlimit") == 0 && argc == 4) {
        struct rlimit rl = {.rlim_cur = num(argv[3]), .rlim_max = num(argv[3])};
        errno = 0;
        long r = syscall(SYS_setrlimit, (long)num(argv[2]), &rl);
        return report(r, errno);
    }
    if (strcmp(c, "kill") == 0 && argc == 4) {
        errno = 0;
        long r = syscall(SYS_kill, (long)num(argv[2]), (long)num(argv[3]));
        return report(r, errno);
    }
    if (strcmp(c, "connect-inet") == 0 && argc == 3) {
        int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (s < 0)
            return report(-1, errno);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)num(argv[2]))};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        errno = 0;
        long r = connect(s, (struct sockaddr *)&sa, sizeof sa);
        return report(r, errno);
    }
    if (strcmp(c, "connect-abstract") == 0 && argc == 3) {
        int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (s < 0)
            return report(-1, errno);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        size_t len = strlen(argv[2]);
        if (len + 1 > sizeof sa.sun_path)
            return usage();
        memcpy(sa.sun_path + 1, argv[2], len); /* sun_path[0] == 0: abstract */
        errno = 0;
        long r = connect(s, (struct sockaddr *)&sa, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len));
        return report(r, errno);
    }
    if (strcmp(c, "pids") == 0 && argc == 2)
        return list_sorted("pids", "/proc");
    if (strcmp(c, "fds") == 0 && argc == 2)
        return list_sorted("fds", "/proc/self/fd");
    if (strcmp(c, "spin") == 0 && argc == 3) {
        struct timespec t0, t, cpu;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        long ms = (long)num(argv[2]);
        volatile unsigned long x = 0;
        do {
            for (int i = 0; i < 100000; i++)
                x += (unsigned long)i;
            clock_gettime(CLOCK_MONOTONIC, &t);
        } while ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 < ms);
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu);
        printf("cpu_ms=%ld\n", cpu.tv_sec * 1000 + cpu.tv_nsec / 1000000);
        return 0;
    }
    if (strcmp(c, "daemon") == 0 && (argc == 3 || argc == 4)) {
        int p[2];
        if (pipe(p) != 0)
            return report(-1, errno);
        pid_t a = fork();
        if (a < 0)
            return report(-1, errno);
        if (a == 0) {
            setsid();
            pid_t b = fork();
            if (b != 0) {
                if (write(p[1], &b, sizeof b) != sizeof b)
                    _exit(1);
                _exit(0);
            }
            close(p[0]);
            close(p[1]);
            for (int fd = 0; fd < 3; fd++) /* detach from the caller's pipes, as daemons do */
                close(fd);
            struct timespec ts = {.tv_sec = (long)num(argv[2]) / 1000, .tv_nsec = ((long)num(argv[2]) % 1000) * 1000000};
            nanosleep(&ts, NULL);
            _exit(0);
        }
        pid_t b = -1;
        close(p[1]);
        if (read(p[0], &b, sizeof b) != sizeof b)
            return report(-1, EIO);
        waitpid(a, NULL, 0);
        return report(b, 0);
    }
    return usage();
}
