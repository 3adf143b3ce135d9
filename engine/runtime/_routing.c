/*
 * engine.runtime._routing: the hash Bytewax routes a state key by.
 *
 * route_hash(key) -> int: Rust's DefaultHasher (SipHash-1-3 with zero keys) over the key as
 * a Rust String hashes itself (its UTF-8 bytes, then 0xFF). Bytewax 0.21 sends a stateful
 * step's item to worker route_hash(key) % workers; tests/engine/runtime/test_placement.py
 * checks this against Bytewax itself. Compiled because choosing shard keys that spread
 * evenly for every worker count tries ~840 candidates a shard.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                               \
    do {                                                                       \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);              \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                 \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                 \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);              \
    } while (0)

static uint64_t siphash13(const unsigned char *data, size_t n)
{
    uint64_t v0 = 0x736f6d6570736575ULL, v1 = 0x646f72616e646f6dULL;
    uint64_t v2 = 0x6c7967656e657261ULL, v3 = 0x7465646279746573ULL;
    size_t end = n - n % 8;
    for (size_t i = 0; i < end; i += 8) {
        uint64_t m = 0;
        for (int k = 7; k >= 0; k--)
            m = (m << 8) | data[i + k];
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t b = ((uint64_t)n & 0xff) << 56;
    for (size_t k = 0; k < n - end; k++)
        b |= (uint64_t)data[end + k] << (8 * k);
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static PyObject *route_hash(PyObject *module, PyObject *key)
{
    Py_ssize_t len;
    const char *utf8 = PyUnicode_AsUTF8AndSize(key, &len);
    if (utf8 == NULL)
        return NULL;
    unsigned char stack[256];
    unsigned char *buf = (size_t)len + 1 <= sizeof stack ? stack : PyMem_Malloc(len + 1);
    if (buf == NULL)
        return PyErr_NoMemory();
    memcpy(buf, utf8, len);
    buf[len] = 0xFF; /* how a Rust str feeds a Hasher: its bytes, then 0xFF */
    uint64_t h = siphash13(buf, (size_t)len + 1);
    if (buf != stack)
        PyMem_Free(buf);
    return PyLong_FromUnsignedLongLong(h);
}

static PyMethodDef methods[] = {
    {"route_hash", route_hash, METH_O,
     "route_hash(key)\n--\n\nThe 64-bit hash Bytewax routes the state key ``key`` by (worker = hash % workers)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_routing", "Bytewax's state key routing hash.", -1, methods,
};

PyMODINIT_FUNC PyInit__routing(void)
{
    return PyModule_Create(&module_def);
}
