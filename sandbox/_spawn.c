/*
 * sandbox._spawn: start bwrap from a multi-threaded Python process without fork(2).
 *
 * spawn(argv, stdio, keep_fds, rlimits, nice, cgroup_join, new_netns, netns_fd, uid, gid, parent_pid) -> pid
 * new_netns() -> fd
 * netns_listen(netns_fd, port) -> fd
 *
 * subprocess.Popen with a preexec_fn must fork(2): the kernel copies the page tables of the
 * whole gateway (70+ MB here), which cost 1-3 ms of system time per sandbox, and CPython
 * then re-initialises its runtime in the child before the preexec_fn runs. This module does
 * what sandbox/limits.py documents as the child's steps with clone(CLONE_VM | CLONE_VFORK),
 * as glibc's posix_spawn does: the child borrows the parent's memory, runs only raw system
 * calls on its own stack, and execs bwrap; the calling thread sleeps until then.
 *
 * The child's steps, in this order (the order is the security argument, see limits.py):
 *   0. all signals blocked (by the parent, before clone); every handler reset to SIG_DFL so
 *      no Python handler can run in the borrowed address space; then an empty mask.
 *   1. stdio: dup2 the three given fds onto 0, 1, 2.
 *   2. every other fd close-on-exec (close_range(2)), except keep_fds.
 *   3. join the cgroup slot: write "0" to each join path (v1 tasks, v2 cgroup.procs).
 *      Before the rlimits: the child holds a copy of the gateway's fd table until exec,
 *      so under RLIMIT_NOFILE an open(2) here could find no free fd below the limit, EMFILE.
 *   4. rlimits: setrlimit(2) for each (resource, soft, hard), still privileged; then the nice
 *      value (setpriority(2)) when it is above 0.
 *   5. new_netns: setns(netns_fd, CLONE_NEWNET) into a namespace new_netns() made ahead, or
 *      unshare(CLONE_NEWNET) when netns_fd is -1.
 *   6. drop: setgroups(0) -> setresgid -> setresuid, when uid >= 0 (raw syscalls: glibc's
 *      wrappers would signal every thread of the parent to change their ids too).
 *   7. PR_SET_PDEATHSIG = SIGKILL after the drop (the kernel clears it on an id change),
 *      then check the parent is still parent_pid.
 *   8. execve(argv[0], argv, {}) with an empty environment.
 * A failing step writes (step, errno) to a close-on-exec pipe and _exits(127); the parent
 * reads it and raises OSError(errno, "sandbox spawn failed at <step>").
 */

#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <net/if.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

#define CHILD_STACK (64 * 1024)

enum step {
    STEP_SIGNALS = 1, STEP_STDIO, STEP_FDS, STEP_RLIMIT, STEP_NICE, STEP_CGROUP, STEP_NETNS,
    STEP_SETGROUPS, STEP_SETGID, STEP_SETUID, STEP_PDEATHSIG, STEP_PARENT, STEP_EXEC,
};

static const char *step_names[] = {
    "?", "signals", "stdio", "fds", "setrlimit", "setpriority", "cgroup join", "network namespace",
    "setgroups", "setresgid", "setresuid", "PR_SET_PDEATHSIG", "parent died", "execve",
};

struct child_args {
    char **argv;
    char **envp;
    int stdio[3];
    int *keep;
    Py_ssize_t n_keep;
    int *rl_res;
    struct rlimit *rl;
    Py_ssize_t n_rl;
    int nice;
    char **cgroups;
    Py_ssize_t n_cgroups;
    int new_netns;
    int netns_fd;
    long uid, gid;
    pid_t parent_pid;
    int err_fd;
    sigset_t *old_mask;
};

static void child_fail(int err_fd, int step) {
    int msg[2] = {step, errno};
    (void)!write(err_fd, msg, sizeof msg);
    _exit(127);
}

static int child_main(void *arg) {
    struct child_args *a = arg;
    sigset_t empty;
    struct sigaction dfl;
    int sig, i;

    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (sig = 1; sig < _NSIG; sig++)
        (void)sigaction(sig, &dfl, NULL); /* EINVAL for SIGKILL/SIGSTOP/internal ones */
    sigemptyset(&empty);
    if (sigprocmask(SIG_SETMASK, &empty, NULL) != 0)
        child_fail(a->err_fd, STEP_SIGNALS);

    for (i = 0; i < 3; i++)
        if (dup2(a->stdio[i], i) < 0)
            child_fail(a->err_fd, STEP_STDIO);

    if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) != 0)
        child_fail(a->err_fd, STEP_FDS);
    for (i = 0; i < a->n_keep; i++)
        if (fcntl(a->keep[i], F_SETFD, 0) != 0)
            child_fail(a->err_fd, STEP_FDS);

    for (i = 0; i < a->n_cgroups; i++) {
        int fd = open(a->cgroups[i], O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, "0", 1) != 1)
            child_fail(a->err_fd, STEP_CGROUP);
        close(fd);
    }

    for (i = 0; i < a->n_rl; i++)
        if (setrlimit(a->rl_res[i], &a->rl[i]) != 0)
            child_fail(a->err_fd, STEP_RLIMIT);
    if (a->nice > 0 && setpriority(PRIO_PROCESS, 0, a->nice) != 0)
        child_fail(a->err_fd, STEP_NICE);

    if (a->new_netns &&
        (a->netns_fd >= 0 ? setns(a->netns_fd, CLONE_NEWNET) : unshare(CLONE_NEWNET)) != 0)
        child_fail(a->err_fd, STEP_NETNS);

    if (a->uid >= 0) {
        if (syscall(SYS_setgroups, 0, NULL) != 0)
            child_fail(a->err_fd, STEP_SETGROUPS);
        if (syscall(SYS_setresgid, (gid_t)a->gid, (gid_t)a->gid, (gid_t)a->gid) != 0)
            child_fail(a->err_fd, STEP_SETGID);
        if (syscall(SYS_setresuid, (uid_t)a->uid, (uid_t)a->uid, (uid_t)a->uid) != 0)
            child_fail(a->err_fd, STEP_SETUID);
    }

    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
        child_fail(a->err_fd, STEP_PDEATHSIG);
    if (getppid() != a->parent_pid) {
        errno = ESRCH;
        child_fail(a->err_fd, STEP_PARENT);
    }

    execve(a->argv[0], a->argv, a->envp);
    child_fail(a->err_fd, STEP_EXEC);
    return 127;
}

/* A NULL-terminated char* array of the bytes objects in seq (borrowed buffers). */
static char **bytes_array(PyObject *seq, Py_ssize_t *n_out, PyObject **keep_alive) {
    PyObject *fast = PySequence_Fast(seq, "expected a sequence of bytes");
    Py_ssize_t n, i;
    char **out;
    if (fast == NULL)
        return NULL;
    n = PySequence_Fast_GET_SIZE(fast);
    out = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (out == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    for (i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        if (!PyBytes_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "expected bytes");
            PyMem_Free(out);
            Py_DECREF(fast);
            return NULL;
        }
        out[i] = PyBytes_AS_STRING(item);
    }
    if (n_out != NULL)
        *n_out = n;
    *keep_alive = fast;
    return out;
}

static int int_array(PyObject *seq, int **out, Py_ssize_t *n_out) {
    PyObject *fast = PySequence_Fast(seq, "expected a sequence of ints");
    Py_ssize_t n, i;
    if (fast == NULL)
        return -1;
    n = PySequence_Fast_GET_SIZE(fast);
    *out = PyMem_Calloc((size_t)n + 1, sizeof(int));
    if (*out == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    for (i = 0; i < n; i++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
        if (v == -1 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
        (*out)[i] = (int)v;
    }
    *n_out = n;
    Py_DECREF(fast);
    return 0;
}

PyDoc_STRVAR(spawn_doc,
"spawn(argv, stdio, keep_fds, rlimits, nice, cgroup_join, new_netns, netns_fd, uid, gid, parent_pid)\n"
"-> pid\n\n"
"argv: list[bytes] (argv[0] an absolute path); stdio: (stdin, stdout, stderr) fds;\n"
"keep_fds: fds the child keeps (all others are closed on exec); rlimits: ((resource, soft,\n"
"hard), ...); nice: nice value 0-19 (0: unchanged); cgroup_join: list[bytes] of\n"
"cgroup files to write \"0\" into (tasks or cgroup.procs); new_netns: bool; netns_fd: a namespace\n"
"from new_netns() to enter when new_netns (-1: a fresh one, unshared in the child);\n"
"uid, gid: ids to drop to (-1: no drop); parent_pid: os.getpid(). Returns the child pid\n"
"once it has exec'd. Raises OSError(errno, 'sandbox spawn failed at <step>') when a step\n"
"failed (the child is reaped).");

static PyObject *spawn(PyObject *self, PyObject *args) {
    PyObject *argv_obj, *stdio_obj, *keep_obj, *rl_obj, *cg_obj;
    PyObject *argv_alive = NULL, *cg_alive = NULL;
    int new_netns, netns_fd, nice;
    long uid, gid, parent_pid;
    struct child_args a;
    char *envp[1] = {NULL};
    int *stdio = NULL;
    Py_ssize_t n_stdio = 0, n_argv = 0, i;
    int err_pipe[2] = {-1, -1};
    void *stack = MAP_FAILED;
    sigset_t all, old;
    pid_t pid;
    int msg[2];
    ssize_t got;
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "OOOOiOpilll:spawn", &argv_obj, &stdio_obj, &keep_obj, &rl_obj, &nice,
                          &cg_obj, &new_netns, &netns_fd, &uid, &gid, &parent_pid))
        return NULL;
    memset(&a, 0, sizeof a);
    a.argv = bytes_array(argv_obj, &n_argv, &argv_alive);
    if (a.argv == NULL)
        goto done;
    if (n_argv < 1 || a.argv[0][0] != '/') {
        PyErr_SetString(PyExc_ValueError, "argv[0] must be an absolute path");
        goto done;
    }
    a.cgroups = bytes_array(cg_obj, &a.n_cgroups, &cg_alive);
    if (a.cgroups == NULL)
        goto done;
    if (int_array(stdio_obj, &stdio, &n_stdio) < 0)
        goto done;
    if (n_stdio != 3) {
        PyErr_SetString(PyExc_ValueError, "stdio must hold three fds");
        goto done;
    }
    memcpy(a.stdio, stdio, sizeof a.stdio);
    if (int_array(keep_obj, &a.keep, &a.n_keep) < 0)
        goto done;
    {
        PyObject *fast = PySequence_Fast(rl_obj, "rlimits must be a sequence");
        if (fast == NULL)
            goto done;
        a.n_rl = PySequence_Fast_GET_SIZE(fast);
        a.rl_res = PyMem_Calloc((size_t)a.n_rl + 1, sizeof(int));
        a.rl = PyMem_Calloc((size_t)a.n_rl + 1, sizeof(struct rlimit));
        if (a.rl_res == NULL || a.rl == NULL) {
            Py_DECREF(fast);
            PyErr_NoMemory();
            goto done;
        }
        for (i = 0; i < a.n_rl; i++) {
            int res;
            unsigned long long soft, hard;
            if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "iKK", &res, &soft, &hard)) {
                Py_DECREF(fast);
                goto done;
            }
            a.rl_res[i] = res;
            a.rl[i].rlim_cur = (rlim_t)soft;
            a.rl[i].rlim_max = (rlim_t)hard;
        }
        Py_DECREF(fast);
    }
    a.envp = envp;
    a.new_netns = new_netns;
    a.netns_fd = netns_fd;
    a.nice = nice;
    a.uid = uid;
    a.gid = gid;
    a.parent_pid = (pid_t)parent_pid;

    if (pipe2(err_pipe, O_CLOEXEC) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    a.err_fd = err_pipe[1];
    stack = mmap(NULL, CHILD_STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK,
                 -1, 0);
    if (stack == MAP_FAILED) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }

    /* No handler of ours may run in the child: block everything until it resets them. */
    sigfillset(&all);
    Py_BEGIN_ALLOW_THREADS
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid = clone(child_main, (char *)stack + CHILD_STACK, CLONE_VM | CLONE_VFORK | SIGCHLD, &a);
    if (pid < 0)
        msg[0] = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    Py_END_ALLOW_THREADS
    if (pid < 0) {
        errno = msg[0];
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    close(err_pipe[1]);
    err_pipe[1] = -1;
    do {
        got = read(err_pipe[0], msg, sizeof msg);
    } while (got < 0 && errno == EINTR);
    if (got == (ssize_t)sizeof msg) {
        int status;
        const char *name = (msg[0] > 0 && msg[0] <= STEP_EXEC) ? step_names[msg[0]] : "?";
        PyObject *text = PyUnicode_FromFormat("sandbox spawn failed at %s", name);
        Py_BEGIN_ALLOW_THREADS
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        Py_END_ALLOW_THREADS
        if (text != NULL) {
            PyObject *exc = PyObject_CallFunction(PyExc_OSError, "iO", msg[1], text);
            if (exc != NULL) {
                PyErr_SetObject(PyExc_OSError, exc);
                Py_DECREF(exc);
            }
            Py_DECREF(text);
        }
        goto done;
    }
    result = PyLong_FromLong((long)pid);

done:
    if (stack != MAP_FAILED)
        munmap(stack, CHILD_STACK);
    for (i = 0; i < 2; i++)
        if (err_pipe[i] >= 0)
            close(err_pipe[i]);
    PyMem_Free(a.argv);
    PyMem_Free(a.cgroups);
    PyMem_Free(a.keep);
    PyMem_Free(a.rl_res);
    PyMem_Free(a.rl);
    PyMem_Free(stdio);
    Py_XDECREF(argv_alive);
    Py_XDECREF(cg_alive);
    return result;
}

/* work(arg) with the calling thread in another network namespace, netns_fd or a new one
 * when it is -1 (unshare), then the thread back in its own (setns(2) acts per thread).
 * Returns 0 or an errno; *back is 0 when the way back failed and the thread is left there. */
static int in_netns(int netns_fd, int (*work)(void *), void *arg, int *back) {
    int own, err = 0;

    *back = 1;
    own = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (own < 0)
        return errno;
    if ((netns_fd >= 0 ? setns(netns_fd, CLONE_NEWNET) : unshare(CLONE_NEWNET)) != 0) {
        err = errno;
    } else {
        err = work(arg);
        if (setns(own, CLONE_NEWNET) != 0) {
            *back = 0;
            err = errno;
        }
    }
    close(own);
    return err;
}

static PyObject *netns_error(const char *name, int err, int back) {
    errno = err;
    if (!back)
        return PyErr_Format(PyExc_OSError, "%s: this thread could not return to its network namespace: %s",
                            name, strerror(err));
    return PyErr_SetFromErrno(PyExc_OSError);
}

/* The fd of the namespace the thread is in now. */
static int open_current_netns(void *arg) {
    int *fd = arg;
    *fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    return *fd < 0 ? errno : 0;
}

struct listener {
    int port;
    int sock;
};

/* lo up, and a TCP socket listening on 127.0.0.1:port, in the thread's namespace. */
static int listen_on_lo(void *arg) {
    struct listener *l = arg;
    struct ifreq ifr;
    struct sockaddr_in addr;
    int one = 1;

    l->sock = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l->sock < 0)
        return errno;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
    if (ioctl(l->sock, SIOCGIFFLAGS, &ifr) != 0)
        return errno;
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(l->sock, SIOCSIFFLAGS, &ifr) != 0)
        return errno;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)l->port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (setsockopt(l->sock, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(l->sock, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(l->sock, 128) != 0)
        return errno;
    return 0;
}

PyDoc_STRVAR(new_netns_doc,
"new_netns() -> fd\n\n"
"A new network namespace (only lo, down), as an O_CLOEXEC fd of its nsfs file. Made by the\n"
"calling thread: unshare(CLONE_NEWNET), open /proc/thread-self/ns/net, then setns back to\n"
"the namespace it was in (network_namespaces(7), setns(2)); the rest of the process never\n"
"leaves its own. Needs CAP_SYS_ADMIN. Raises OSError; when the way back failed the error\n"
"says so and the calling thread is left in the new namespace: it must do nothing more.");

static PyObject *new_netns(PyObject *self, PyObject *unused) {
    int fresh = -1, err, back;

    Py_BEGIN_ALLOW_THREADS
    err = in_netns(-1, open_current_netns, &fresh, &back);
    Py_END_ALLOW_THREADS
    if (err != 0 || !back) {
        if (fresh >= 0)
            close(fresh);
        return netns_error("new_netns", err, back);
    }
    return PyLong_FromLong(fresh);
}

PyDoc_STRVAR(netns_listen_doc,
"netns_listen(netns_fd, port) -> fd\n\n"
"A TCP socket listening on 127.0.0.1:port inside the network namespace netns_fd, whose lo\n"
"it brings up (SIOCSIFFLAGS, netdevice(7)): the calling thread enters that namespace\n"
"(setns(2)), makes the socket there (a socket belongs to the namespace it was made in) and\n"
"returns to its own. The fd (O_CLOEXEC, blocking) stays in this process: connections made\n"
"inside the namespace are accepted outside it. Needs CAP_SYS_ADMIN and CAP_NET_ADMIN.\n"
"Raises OSError; when the way back failed the error says so, as for new_netns().");

static PyObject *netns_listen(PyObject *self, PyObject *args) {
    int netns_fd, err, back;
    struct listener l = {0, -1};

    if (!PyArg_ParseTuple(args, "ii:netns_listen", &netns_fd, &l.port))
        return NULL;
    if (l.port <= 0 || l.port > 65535 || netns_fd < 0) {
        PyErr_SetString(PyExc_ValueError, "netns_fd must be an fd and port 1-65535");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    err = in_netns(netns_fd, listen_on_lo, &l, &back);
    Py_END_ALLOW_THREADS
    if (err != 0 || !back) {
        if (l.sock >= 0)
            close(l.sock);
        return netns_error("netns_listen", err, back);
    }
    return PyLong_FromLong(l.sock);
}

static PyMethodDef methods[] = {
    {"spawn", spawn, METH_VARARGS, spawn_doc},
    {"new_netns", new_netns, METH_NOARGS, new_netns_doc},
    {"netns_listen", netns_listen, METH_VARARGS, netns_listen_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "sandbox._spawn",
    "Start bwrap with clone(CLONE_VM|CLONE_VFORK): see sandbox/_spawn.c.", -1, methods,
};

PyMODINIT_FUNC PyInit__spawn(void) { return PyModule_Create(&module); }
