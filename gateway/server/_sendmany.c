/* _sendmany: send many UDP datagrams, each to its own address, with few system calls.
 *
 *     send_many(fd: int, datagrams: Sequence[tuple[bytes, tuple]], /) -> int
 *
 * Each address is a tuple as asyncio gives them: (host, port) for IPv4, (host, port, flowinfo,
 * scope_id) or (host, port) for IPv6 (IPv4-mapped IPv6 included). Hosts must be numeric: this
 * module never resolves names. The datagrams go out in order, with one sendmmsg(2) per up to
 * 1024 of them (UIO_MAXIOV, the most one call takes), the GIL released around each call.
 *
 * It returns how many datagrams were sent, from the start. When that is fewer than given, the
 * next one was not sent, because either
 *   - the kernel refused it for now (EAGAIN / EWOULDBLOCK / ENOBUFS): the caller decides what
 *     to do with the rest (gateway/server/sendmany.py hands them to asyncio, which buffers);
 *   - or it fails on its own (an unreachable or malformed address, too large...): a call that
 *     starts with it raises the error.
 * Errors are raised only for the first datagram of a call, so a count is never lost: OSError
 * for what the kernel said, TypeError / ValueError / OverflowError for a malformed item.
 *
 * Linux only (sendmmsg is a GNU extension); setuptools builds this as an optional extension, and
 * the gateway falls back to one sendto per datagram where it is missing.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h> /* first: its pyconfig.h defines _GNU_SOURCE, which sendmmsg needs */

#ifndef __linux__
#error "_sendmany needs Linux's sendmmsg(2); without it the gateway sends one sendto per datagram"
#endif

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#define BATCH_MAX 1024 /* UIO_MAXIOV: the most messages one sendmmsg(2) call accepts */

typedef union {
    struct sockaddr sa;
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
} address_t;

/* Fill *out from an address tuple. Returns the sockaddr's length, or 0 with an exception set. */
static socklen_t
parse_address(PyObject *addr, address_t *out)
{
    Py_ssize_t size, host_size;
    const char *host;
    long port;

    if (!PyTuple_Check(addr)
        || ((size = PyTuple_GET_SIZE(addr)) != 2 && size != 4)) {
        PyErr_SetString(PyExc_TypeError,
                        "an address must be a tuple (host, port) or (host, port, flowinfo, "
                        "scope_id)");
        return 0;
    }
    /* TypeError if not a str */
    host = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(addr, 0), &host_size);
    if (host == NULL)
        return 0;
    if ((size_t)host_size != strlen(host)) {
        PyErr_SetString(PyExc_ValueError, "embedded null character in host");
        return 0;
    }
    port = PyLong_AsLong(PyTuple_GET_ITEM(addr, 1));
    if (port == -1 && PyErr_Occurred())
        return 0;
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_OverflowError, "port must be 0-65535");
        return 0;
    }

    memset(out, 0, sizeof(*out));
    if (size == 2 && inet_pton(AF_INET, host, &out->v4.sin_addr) == 1) {
        out->v4.sin_family = AF_INET;
        out->v4.sin_port = htons((unsigned short)port);
        return (socklen_t)sizeof(out->v4);
    }
    if (inet_pton(AF_INET6, host, &out->v6.sin6_addr) == 1) {
        out->v6.sin6_family = AF_INET6;
        out->v6.sin6_port = htons((unsigned short)port);
        if (size == 4) {
            unsigned long flowinfo = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(addr, 2));
            if (flowinfo == (unsigned long)-1 && PyErr_Occurred())
                return 0;
            if (flowinfo > 0xfffff) { /* 20 bits, as socket.sendto checks */
                PyErr_SetString(PyExc_OverflowError, "flowinfo must be 0-1048575");
                return 0;
            }
            unsigned long scope_id = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(addr, 3));
            if (scope_id == (unsigned long)-1 && PyErr_Occurred())
                return 0;
            if (scope_id > UINT32_MAX) {
                PyErr_SetString(PyExc_OverflowError, "scope_id must fit in 32 bits");
                return 0;
            }
            out->v6.sin6_flowinfo = htonl((uint32_t)flowinfo);
            out->v6.sin6_scope_id = (uint32_t)scope_id;
        }
        return (socklen_t)sizeof(out->v6);
    }
    PyErr_Format(PyExc_ValueError, "not a numeric IPv4 or IPv6 address: %R",
                 PyTuple_GET_ITEM(addr, 0));
    return 0;
}

/* Point msg (with its iovec and address slots) at one (bytes, address) item. 0, or -1 with an
 * exception set. The pointers stay valid while the item is referenced: bytes and tuples are
 * immutable, and the caller holds a tuple that references every item. */
static int
fill_message(PyObject *item, struct mmsghdr *msg, struct iovec *iov, address_t *address)
{
    PyObject *data;
    socklen_t length;

    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
        PyErr_SetString(PyExc_TypeError, "each datagram must be a tuple (bytes, address)");
        return -1;
    }
    data = PyTuple_GET_ITEM(item, 0);
    if (!PyBytes_Check(data)) {
        PyErr_Format(PyExc_TypeError, "a datagram must be bytes, not %.100s",
                     Py_TYPE(data)->tp_name);
        return -1;
    }
    length = parse_address(PyTuple_GET_ITEM(item, 1), address);
    if (length == 0)
        return -1;
    iov->iov_base = PyBytes_AS_STRING(data);
    iov->iov_len = (size_t)PyBytes_GET_SIZE(data);
    memset(msg, 0, sizeof(*msg));
    msg->msg_hdr.msg_name = &address->sa;
    msg->msg_hdr.msg_namelen = length;
    msg->msg_hdr.msg_iov = iov;
    msg->msg_hdr.msg_iovlen = 1;
    return 0;
}

static PyObject *
send_many(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *items = NULL, *result = NULL;
    struct mmsghdr *msgs = NULL;
    struct iovec *iovs = NULL;
    address_t *addresses = NULL;
    Py_ssize_t total, slots, sent = 0;
    long fd;

    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "send_many(fd, datagrams) takes exactly 2 arguments");
        return NULL;
    }
    fd = PyLong_AsLong(args[0]);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (fd < 0 || fd > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "fd must be a non-negative int");
        return NULL;
    }
    /* A tuple of our own: it holds every item alive, whatever the caller does to its list
     * (from another thread) while the GIL is released. */
    items = PySequence_Tuple(args[1]);
    if (items == NULL)
        return NULL;
    total = PyTuple_GET_SIZE(items);
    if (total == 0) {
        Py_DECREF(items);
        return PyLong_FromLong(0);
    }

    slots = total < BATCH_MAX ? total : BATCH_MAX;
    msgs = PyMem_New(struct mmsghdr, (size_t)slots);
    iovs = PyMem_New(struct iovec, (size_t)slots);
    addresses = PyMem_New(address_t, (size_t)slots);
    if (msgs == NULL || iovs == NULL || addresses == NULL) {
        PyErr_NoMemory();
        goto done;
    }

    while (sent < total) {
        Py_ssize_t want = total - sent < slots ? total - sent : slots;
        Py_ssize_t ready = 0;
        int malformed = 0, rc, saved_errno;

        for (; ready < want; ready++) {
            if (fill_message(PyTuple_GET_ITEM(items, sent + ready), &msgs[ready], &iovs[ready],
                             &addresses[ready]) < 0) {
                if (sent + ready == 0)
                    goto done; /* the first datagram of the call: raise */
                PyErr_Clear(); /* send those before it; a call starting there raises */
                malformed = 1;
                break;
            }
        }
        if (ready == 0)
            break;

        Py_BEGIN_ALLOW_THREADS
        rc = sendmmsg((int)fd, msgs, (unsigned int)ready, 0);
        saved_errno = errno;
        Py_END_ALLOW_THREADS

        if (rc < 0) {
            if (saved_errno == EINTR) {
                if (sent > 0)
                    break; /* return the count; the interpreter runs the handlers next */
                if (PyErr_CheckSignals() < 0)
                    goto done;
                continue; /* PEP 475: retry after a signal whose handler did not raise */
            }
            if (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK || saved_errno == ENOBUFS)
                break; /* refused for now: the caller decides about the rest */
            if (sent > 0)
                break; /* a call starting at this datagram reports the error */
            errno = saved_errno;
            PyErr_SetFromErrno(PyExc_OSError);
            goto done;
        }
        sent += rc;
        if (rc < ready || malformed)
            break; /* the kernel stopped early (the reason comes with the next call) */
    }
    result = PyLong_FromSsize_t(sent);

done:
    PyMem_Free(msgs);
    PyMem_Free(iovs);
    PyMem_Free(addresses);
    Py_DECREF(items);
    return result;
}

static PyMethodDef methods[] = {
    {"send_many", (PyCFunction)(void (*)(void))send_many, METH_FASTCALL,
     "send_many(fd, datagrams, /) -> int\n--\n\n"
     "Send (bytes, address) datagrams in order with sendmmsg(2); return how many were sent.\n"
     "Stops early at EAGAIN/ENOBUFS, or before a datagram that fails on its own, which\n"
     "raises only when it is the first of the call."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "gateway.server._sendmany",
    "Send many UDP datagrams with one sendmmsg(2) per up to 1024 of them.",
    -1,
    methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__sendmany(void)
{
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    if (PyModule_AddIntConstant(module, "BATCH_MAX", BATCH_MAX) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
