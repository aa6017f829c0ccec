/* twspy._speedups: the WebSocket masking XOR (RFC 6455 §5.3) in C.
 *
 * Optional. twspy.frame imports mask(), mask_into() and mask_join() from here when this module was
 * built (setup.py; `make build` in a checkout) and TWSPY_NO_SPEEDUPS is not set, and falls
 * back to its pure-Python versions otherwise; both behave the same, argument errors
 * included (tests compare them byte for byte).
 *
 * Why C: unmasking a large payload was most of the twspy server's CPU for large messages
 * (bench/profile_twspy.py --case throughput-1MiB: 62 %), and pure Python tops out near
 * 0.5 GB/s (big-integer XOR, strided bytes.translate). Here the XOR runs 8 bytes at a time
 * in a loop the compiler vectorizes (32 bytes per iteration), with the GIL released for
 * large buffers. mask_join() unmasks a payload received in pieces straight into the message's
 * bytes: one pass instead of three (copy each piece, XOR it in place, join them), which
 * halved the user-space time of a 1 MiB echo on the asyncio server (bench/mask_micro.py).
 * Nothing else moved to C: UTF-8 validation is already C in codecs, and the rest of the
 * large-message path is the kernel's (recv, sendall).
 *
 * C99, Python.h only.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Above this size the XOR runs without the GIL: ~25 us of work at ~10 GB/s, far more
 * than a GIL hand-off, and other connections' threads run meanwhile. */
#define RELEASE_GIL_ABOVE (256 * 1024)

/* dst[i] = src[i] ^ key[i % 4] for i < n. dst may be src (in place); any alignment. */
static void
xor_key(unsigned char *dst, const unsigned char *src, Py_ssize_t n, const unsigned char key[4])
{
    unsigned char spread[8] = {key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]};
    uint64_t k;
    Py_ssize_t i = 0;

    memcpy(&k, spread, 8);  /* the key in native byte order, twice: i stays a multiple of 8 */
    for (; i + 32 <= n; i += 32) {
        uint64_t a, b, c, d;
        /* memcpy: unaligned loads and stores without undefined behaviour; compiled to plain
         * (vector) moves */
        memcpy(&a, src + i, 8);
        memcpy(&b, src + i + 8, 8);
        memcpy(&c, src + i + 16, 8);
        memcpy(&d, src + i + 24, 8);
        a ^= k;
        b ^= k;
        c ^= k;
        d ^= k;
        memcpy(dst + i, &a, 8);
        memcpy(dst + i + 8, &b, 8);
        memcpy(dst + i + 16, &c, 8);
        memcpy(dst + i + 24, &d, 8);
    }
    for (; i + 8 <= n; i += 8) {
        uint64_t a;
        memcpy(&a, src + i, 8);
        a ^= k;
        memcpy(dst + i, &a, 8);
    }
    for (; i < n; i++) {
        dst[i] = src[i] ^ key[i & 3];
    }
}

static void
xor_key_maybe_nogil(unsigned char *dst, const unsigned char *src, Py_ssize_t n, const unsigned char key[4])
{
    if (n >= RELEASE_GIL_ABOVE) {
        Py_BEGIN_ALLOW_THREADS
        xor_key(dst, src, n, key);
        Py_END_ALLOW_THREADS
    }
    else {
        xor_key(dst, src, n, key);
    }
}

/* The 4-byte key from any bytes-like object: TypeError for other types, ValueError for
 * another length (as twspy.frame's Python versions). */
static int
get_key(PyObject *obj, unsigned char key[4])
{
    Py_buffer view;

    if (!PyObject_CheckBuffer(obj)) {
        PyErr_Format(PyExc_TypeError, "masking key must be a bytes-like object, not %.100s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0) {
        if (PyErr_ExceptionMatches(PyExc_BufferError)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_TypeError, "masking key must be a contiguous bytes-like object");
        }
        return -1;
    }
    if (view.len != 4) {
        PyErr_Format(PyExc_ValueError, "masking key must be 4 bytes, not %zd", view.len);
        PyBuffer_Release(&view);
        return -1;
    }
    memcpy(key, view.buf, 4);
    PyBuffer_Release(&view);
    return 0;
}

static int
check_nargs(const char *name, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes exactly 2 arguments (%zd given)", name, nargs);
        return -1;
    }
    return 0;
}

/* A contiguous view of a bytes-like object; TypeError for anything else, a read-only
 * buffer when `writable`, or a non-contiguous one (as twspy.frame's Python versions). */
static int
get_bytes(PyObject *obj, Py_buffer *view, const char *what, int writable)
{
    if (!PyObject_CheckBuffer(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a %sbytes-like object, not %.100s",
                     what, writable ? "writable " : "", Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0) {
        if (PyErr_ExceptionMatches(PyExc_BufferError)) {  /* e.g. a strided memoryview */
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s must be a contiguous bytes-like object", what);
        }
        return -1;
    }
    if (writable && view->readonly) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_TypeError, "%s must be a writable bytes-like object, not read-only %.100s",
                     what, Py_TYPE(obj)->tp_name);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(mask_doc,
"mask(key, data) -> bytes\n\n"
"XOR data with the 4-byte key repeated (RFC 6455 5.3); masking and unmasking are the same.");

static PyObject *
speedups_mask(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned char key[4];
    Py_buffer data;
    PyObject *result;

    (void)module;
    if (check_nargs("mask", nargs) < 0 || get_key(args[0], key) < 0 || get_bytes(args[1], &data, "data", 0) < 0) {
        return NULL;
    }
    result = PyBytes_FromStringAndSize(NULL, data.len);
    if (result != NULL) {
        xor_key_maybe_nogil((unsigned char *)PyBytes_AS_STRING(result), (const unsigned char *)data.buf,
                            data.len, key);
    }
    PyBuffer_Release(&data);
    return result;
}

PyDoc_STRVAR(mask_into_doc,
"mask_into(key, buffer) -> None\n\n"
"mask() in place, into a writable bytes-like object (a bytearray, a writable memoryview).");

static PyObject *
speedups_mask_into(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned char key[4];
    Py_buffer buffer;

    (void)module;
    if (check_nargs("mask_into", nargs) < 0 || get_key(args[0], key) < 0
            || get_bytes(args[1], &buffer, "buffer", 1) < 0) {
        return NULL;
    }
    /* The export pins the buffer: a bytearray can't be resized while the GIL is released. */
    xor_key_maybe_nogil((unsigned char *)buffer.buf, (const unsigned char *)buffer.buf, buffer.len, key);
    PyBuffer_Release(&buffer);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(mask_join_doc,
"mask_join(key, parts) -> bytes\n\n"
"mask(key, b\"\".join(parts)) in one pass: the pieces of one masked payload, as they were\n"
"received, unmasked into one new bytes object (the key's phase carries on across pieces).");

static PyObject *
speedups_mask_join(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned char key[4];
    PyObject *seq, *result = NULL;
    Py_buffer *views;
    Py_ssize_t count, got = 0, total = 0, i;

    (void)module;
    if (check_nargs("mask_join", nargs) < 0 || get_key(args[0], key) < 0) {
        return NULL;
    }
    seq = PySequence_Fast(args[1], "parts must be an iterable of bytes-like objects");
    if (seq == NULL) {
        return NULL;
    }
    count = PySequence_Fast_GET_SIZE(seq);
    views = PyMem_New(Py_buffer, count > 0 ? count : 1);
    if (views == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    /* Every part's buffer is held (pinned) until the XOR is done, which may run without the GIL. */
    for (; got < count; got++) {
        if (get_bytes(PySequence_Fast_GET_ITEM(seq, got), &views[got], "part", 0) < 0) {
            goto done;
        }
        if (views[got].len > PY_SSIZE_T_MAX - total) {
            got++;
            PyErr_SetString(PyExc_OverflowError, "joined parts are too long");
            goto done;
        }
        total += views[got].len;
    }
    result = PyBytes_FromStringAndSize(NULL, total);
    if (result != NULL) {
        unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(result);
        PyThreadState *state = total >= RELEASE_GIL_ABOVE ? PyEval_SaveThread() : NULL;
        Py_ssize_t offset = 0;

        for (i = 0; i < count; i++) {
            /* §5.3: byte j of the payload is XORed with key[j % 4], j counted from the first part */
            unsigned char rotated[4];
            int phase = (int)(offset & 3), j;

            for (j = 0; j < 4; j++) {
                rotated[j] = key[(j + phase) & 3];
            }
            xor_key(dst + offset, (const unsigned char *)views[i].buf, views[i].len, rotated);
            offset += views[i].len;
        }
        if (state != NULL) {
            PyEval_RestoreThread(state);
        }
    }
done:
    for (i = 0; i < got; i++) {
        PyBuffer_Release(&views[i]);
    }
    PyMem_Free(views);
    Py_DECREF(seq);
    return result;
}

static PyMethodDef speedups_methods[] = {
    {"mask", (PyCFunction)(void (*)(void))speedups_mask, METH_FASTCALL, mask_doc},
    {"mask_into", (PyCFunction)(void (*)(void))speedups_mask_into, METH_FASTCALL, mask_into_doc},
    {"mask_join", (PyCFunction)(void (*)(void))speedups_mask_join, METH_FASTCALL, mask_join_doc},
    {NULL, NULL, 0, NULL}
};

static PyModuleDef_Slot speedups_slots[] = {
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#ifdef Py_mod_gil
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},  /* no state: safe without the GIL (free-threaded builds) */
#endif
    {0, NULL}
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    "twspy._speedups",
    "Optional C versions of twspy.frame.mask, mask_into and mask_join (RFC 6455 5.3).",
    0,
    speedups_methods,
    speedups_slots,
    NULL,
    NULL,
    NULL
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
