/*
 * engine.features._kernels: the column operations that route a batch of events to shards.
 *
 * shard_groups(entities, shards) -> (order, groups)
 *     Each entity's shard is crc32(UTF-8 bytes) % shards, exactly zlib.crc32(e.encode()) %
 *     shards. `order` (bytes holding int64 positions) lists the events shard by shard, in
 *     arrival order within a shard (a stable counting sort); `groups` is a list of
 *     (shard, start, stop) ranges of `order`, for the shards that got events, in shard order.
 * take(values, order) -> list
 *     [values[i] for i in order], with `order` any buffer of int64 positions.
 * rows_of(entities, index, names) -> bytes
 *     Each entity's row number (int64): index[entity], or for an entity not seen before the
 *     next free row, recorded in index and appended to names. A shard keeps its entities'
 *     state in numbered rows.
 * numbers_of(values) -> bytes
 *     Each value as a float64 (bytes): ints and floats that are finite, NaN for anything else
 *     (None, bool, text, inf). The numeric input of a measure.
 * context_numbers(contexts, key) -> bytes
 *     numbers_of([c.get(key) for c in contexts]) without the list.
 * codes_of(values, index) -> bytes
 *     index[v] (an int) of each value as int64 (bytes); a KeyError for a value not in it.
 * pack_bytes(values) -> (blob, ends)
 *     b"".join(values), and where each value ends in it (bytes holding int64 offsets): a
 *     batch's raw messages pickle as two buffers instead of an object each.
 * unpack_bytes(blob, ends) -> list[bytes]
 *     The values pack_bytes packed.
 *
 * Why C: in Python these are a dict lookup per event (memoised hashes), an argsort and a list
 * comprehension per column, ~0.3 us an event for the features pipeline's router.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

static uint32_t crc_table[256];

static void init_crc_table(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[n] = c;
    }
}

/* CRC-32 (ISO-HDLC), the one zlib.crc32 computes. */
static uint32_t crc32_of(const unsigned char *s, Py_ssize_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    for (Py_ssize_t i = 0; i < n; i++)
        c = crc_table[(c ^ s[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static PyObject *shard_groups(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "shard_groups(entities: list[str], shards: int)");
        return NULL;
    }
    PyObject *entities = args[0];
    long shards = PyLong_AsLong(args[1]);
    if (shards == -1 && PyErr_Occurred())
        return NULL;
    if (shards < 1 || (unsigned long)shards > 0xFFFFFFFFUL) {
        PyErr_SetString(PyExc_ValueError, "shards must be between 1 and 2**32 - 1");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(entities);
    uint32_t *shard_of = PyMem_Malloc((n ? n : 1) * sizeof *shard_of);
    Py_ssize_t *starts = PyMem_Calloc(shards + 1, sizeof *starts);
    PyObject *order = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(int64_t));
    PyObject *groups = NULL, *result = NULL;
    if (shard_of == NULL || starts == NULL || order == NULL) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *e = PyList_GET_ITEM(entities, i);
        if (!PyUnicode_Check(e)) {
            PyErr_SetString(PyExc_TypeError, "entities must be str");
            goto done;
        }
        Py_ssize_t len;
        const char *utf8 = PyUnicode_AsUTF8AndSize(e, &len);
        if (utf8 == NULL)
            goto done;
        shard_of[i] = crc32_of((const unsigned char *)utf8, len) % (uint32_t)shards;
        starts[shard_of[i] + 1]++;
    }
    for (long s = 0; s < shards; s++)
        starts[s + 1] += starts[s];
    groups = PyList_New(0);
    if (groups == NULL)
        goto done;
    for (long s = 0; s < shards; s++) {
        if (starts[s + 1] == starts[s])
            continue;
        PyObject *g = Py_BuildValue("(lnn)", s, starts[s], starts[s + 1]);
        if (g == NULL || PyList_Append(groups, g) < 0) {
            Py_XDECREF(g);
            goto done;
        }
        Py_DECREF(g);
    }
    int64_t *out = (int64_t *)PyBytes_AS_STRING(order);
    for (Py_ssize_t i = 0; i < n; i++)  /* starts[s] becomes the next free slot of shard s */
        out[starts[shard_of[i]]++] = (int64_t)i;
    result = PyTuple_Pack(2, order, groups);
done:
    PyMem_Free(shard_of);
    PyMem_Free(starts);
    Py_XDECREF(order);
    Py_XDECREF(groups);
    return result;
}

/* Packed int64 positions: raw bytes (read as int64), or an array of 8-byte signed ints. */
static int holds_int64(const Py_buffer *view)
{
    if (view->ndim > 1 || view->len % (Py_ssize_t)sizeof(int64_t) != 0)
        return 0;
    const char *f = view->format;
    if (f == NULL || strcmp(f, "B") == 0)
        return 1;
    if (f[0] == '<' || f[0] == '=' || f[0] == '@')
        f++;
    return view->itemsize == (Py_ssize_t)sizeof(int64_t) && (strcmp(f, "q") == 0 || strcmp(f, "l") == 0);
}

static PyObject *take(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "take(values, order)");
        return NULL;
    }
    PyObject *values = PySequence_Fast(args[0], "values must be a sequence");
    if (values == NULL)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        Py_DECREF(values);
        return NULL;
    }
    PyObject *out = NULL;
    if (!holds_int64(&view)) {
        PyErr_SetString(PyExc_ValueError, "order must hold int64 positions");
        goto done;
    }
    Py_ssize_t n = view.len / (Py_ssize_t)sizeof(int64_t), size = PySequence_Fast_GET_SIZE(values);
    const int64_t *positions = (const int64_t *)view.buf;
    PyObject **items = PySequence_Fast_ITEMS(values);
    out = PyList_New(n);
    if (out == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t p = positions[i];
        if (p < 0 || p >= size) {
            Py_CLEAR(out);
            PyErr_SetString(PyExc_IndexError, "take: position out of range");
            goto done;
        }
        PyList_SET_ITEM(out, i, Py_NewRef(items[p]));
    }
done:
    PyBuffer_Release(&view);
    Py_DECREF(values);
    return out;
}

static PyObject *pack_bytes(PyObject *module, PyObject *values_arg)
{
    PyObject *values = PySequence_Fast(values_arg, "values must be a sequence");
    if (values == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(values), total = 0;
    PyObject **items = PySequence_Fast_ITEMS(values);
    PyObject *blob = NULL, *ends = NULL, *result = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyBytes_Check(items[i])) {
            PyErr_SetString(PyExc_TypeError, "values must be bytes");
            goto done;
        }
        total += PyBytes_GET_SIZE(items[i]);
    }
    blob = PyBytes_FromStringAndSize(NULL, total);
    ends = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(int64_t));
    if (blob == NULL || ends == NULL)
        goto done;
    char *out = PyBytes_AS_STRING(blob);
    int64_t *end = (int64_t *)PyBytes_AS_STRING(ends);
    Py_ssize_t at = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t len = PyBytes_GET_SIZE(items[i]);
        memcpy(out + at, PyBytes_AS_STRING(items[i]), len);
        at += len;
        end[i] = at;
    }
    result = PyTuple_Pack(2, blob, ends);
done:
    Py_XDECREF(blob);
    Py_XDECREF(ends);
    Py_DECREF(values);
    return result;
}

static PyObject *rows_of(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyList_CheckExact(args[0]) || !PyDict_CheckExact(args[1]) || !PyList_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "rows_of(entities: list, index: dict, names: list)");
        return NULL;
    }
    PyObject *entities = args[0], *index = args[1], *names = args[2];
    Py_ssize_t n = PyList_GET_SIZE(entities);
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(int64_t));
    if (out == NULL)
        return NULL;
    int64_t *rows = (int64_t *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *e = PyList_GET_ITEM(entities, i);
        PyObject *row = PyDict_GetItemWithError(index, e);
        if (row != NULL) {
            rows[i] = PyLong_AsLongLong(row);
            if (rows[i] == -1 && PyErr_Occurred())
                goto error;
            continue;
        }
        if (PyErr_Occurred())
            goto error;
        Py_ssize_t next = PyList_GET_SIZE(names);
        PyObject *number = PyLong_FromSsize_t(next);
        if (number == NULL)
            goto error;
        int failed = PyDict_SetItem(index, e, number) < 0 || PyList_Append(names, e) < 0;
        Py_DECREF(number);
        if (failed)
            goto error;
        rows[i] = next;
    }
    return out;
error:
    Py_DECREF(out);
    return NULL;
}

/* A measure's numeric input: finite int or float, else NaN (bools are not numbers). */
static double number_or_nan(PyObject *v)
{
    double x;
    if (PyFloat_CheckExact(v))
        x = PyFloat_AS_DOUBLE(v);
    else if (PyLong_CheckExact(v)) {
        x = PyLong_AsDouble(v);
        if (x == -1.0 && PyErr_Occurred()) {
            PyErr_Clear(); /* too large for a float: not a usable number */
            return Py_NAN;
        }
    } else
        return Py_NAN;
    return isfinite(x) ? x : Py_NAN;
}

static PyObject *numbers_of(PyObject *module, PyObject *values_arg)
{
    PyObject *values = PySequence_Fast(values_arg, "values must be a sequence");
    if (values == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(values);
    PyObject **items = PySequence_Fast_ITEMS(values);
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(double));
    if (out != NULL) {
        double *x = (double *)PyBytes_AS_STRING(out);
        for (Py_ssize_t i = 0; i < n; i++)
            x[i] = number_or_nan(items[i]);
    }
    Py_DECREF(values);
    return out;
}

static PyObject *context_numbers(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "context_numbers(contexts: list, key)");
        return NULL;
    }
    PyObject *contexts = args[0], *key = args[1];
    Py_ssize_t n = PyList_GET_SIZE(contexts);
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(double));
    if (out == NULL)
        return NULL;
    double *x = (double *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *c = PyList_GET_ITEM(contexts, i), *v = NULL;
        if (PyDict_Check(c)) {
            v = PyDict_GetItemWithError(c, key);
            if (v == NULL && PyErr_Occurred()) {
                Py_DECREF(out);
                return NULL;
            }
        }
        x[i] = v == NULL ? Py_NAN : number_or_nan(v);
    }
    return out;
}

static PyObject *codes_of(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyDict_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "codes_of(values, index: dict)");
        return NULL;
    }
    PyObject *values = PySequence_Fast(args[0], "values must be a sequence");
    if (values == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(values);
    PyObject **items = PySequence_Fast_ITEMS(values);
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(int64_t));
    if (out == NULL)
        goto done;
    int64_t *codes = (int64_t *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *code = PyDict_GetItemWithError(args[1], items[i]);
        if (code == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetObject(PyExc_KeyError, items[i]);
            Py_CLEAR(out);
            goto done;
        }
        codes[i] = PyLong_AsLongLong(code);
        if (codes[i] == -1 && PyErr_Occurred()) {
            Py_CLEAR(out);
            goto done;
        }
    }
done:
    Py_DECREF(values);
    return out;
}

static PyObject *unpack_bytes(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "unpack_bytes(blob: bytes, ends: bytes)");
        return NULL;
    }
    const char *blob = PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    if (PyBytes_GET_SIZE(args[1]) % (Py_ssize_t)sizeof(int64_t) != 0) {
        PyErr_SetString(PyExc_ValueError, "unpack_bytes: ends must hold int64 offsets");
        return NULL;
    }
    const int64_t *ends = (const int64_t *)PyBytes_AS_STRING(args[1]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[1]) / (Py_ssize_t)sizeof(int64_t);
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    int64_t start = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (ends[i] < start || ends[i] > size) {
            Py_DECREF(out);
            PyErr_SetString(PyExc_ValueError, "unpack_bytes: ends out of order or past the blob");
            return NULL;
        }
        PyObject *value = PyBytes_FromStringAndSize(blob + start, (Py_ssize_t)(ends[i] - start));
        if (value == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, value);
        start = ends[i];
    }
    return out;
}

static PyMethodDef methods[] = {
    {"shard_groups", (PyCFunction)(void (*)(void))shard_groups, METH_FASTCALL,
     "shard_groups(entities, shards)\n--\n\n"
     "(order, groups): positions of the events shard by shard (int64 bytes, stable), and\n"
     "(shard, start, stop) ranges of order, with shard = zlib.crc32(entity.encode()) % shards."},
    {"take", (PyCFunction)(void (*)(void))take, METH_FASTCALL,
     "take(values, order)\n--\n\n[values[i] for i in order], order a buffer of int64 positions."},
    {"rows_of", (PyCFunction)(void (*)(void))rows_of, METH_FASTCALL,
     "rows_of(entities, index, names)\n--\n\nRow numbers (int64 bytes) of entities, numbering new ones as they come."},
    {"numbers_of", numbers_of, METH_O,
     "numbers_of(values)\n--\n\nfloat64 bytes: each finite int or float, NaN for anything else."},
    {"context_numbers", (PyCFunction)(void (*)(void))context_numbers, METH_FASTCALL,
     "context_numbers(contexts, key)\n--\n\nnumbers_of([c.get(key) for c in contexts])."},
    {"codes_of", (PyCFunction)(void (*)(void))codes_of, METH_FASTCALL,
     "codes_of(values, index)\n--\n\nint64 bytes: index[v] for each value."},
    {"unpack_bytes", (PyCFunction)(void (*)(void))unpack_bytes, METH_FASTCALL,
     "unpack_bytes(blob, ends)\n--\n\nThe list of bytes values pack_bytes(values) packed."},
    {"pack_bytes", pack_bytes, METH_O,
     "pack_bytes(values)\n--\n\n(b''.join(values), the int64 end offset of each value as bytes)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_kernels", "Column kernels of the features router.", -1, methods,
};

PyMODINIT_FUNC PyInit__kernels(void)
{
    init_crc_table();
    return PyModule_Create(&module_def);
}
