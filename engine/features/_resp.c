/*
 * engine.features._resp: the online store's write commands, encoded in C.
 *
 * hset_running(prefix, rows, wall_ms, dumps) encodes one Redis HSET per row of running feature
 * values (engine.features.shard.RunningValues) in RESP, ready to send as one pipelined write:
 *
 *     HSET <prefix><entity> <column> <value> ... _t <last_event_ms> _asof <asof_ms> _w <wall_ms>
 *
 * Values are text exactly as engine.features.online.encode_value writes them: None is the
 * empty string, a float its repr() (the shortest round-trip form, via the function repr()
 * itself uses; orjson.dumps, passed as `dumps`, writes the same digits ~20x faster, and is
 * used wherever its text is provably the same), an int or anything else its str().
 *
 * Why C: building the argument tuples and packing them with hiredis cost ~7.5 us per entity
 * (38 arguments, 15 of them numbers), about a sixth of the pipeline's CPU while it catches up.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buffer;

static int reserve(Buffer *b, Py_ssize_t more)
{
    if (b->len + more <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more)
        cap *= 2;
    char *data = PyMem_Realloc(b->data, cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static int put(Buffer *b, const char *s, Py_ssize_t n)
{
    if (reserve(b, n) < 0)
        return -1;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
}

/* Decimal digits of v into the end of tmp[32]; returns where they start (snprintf costs
 * ~70 ns a call, and a row of 15 features has ~40 numbers to write). */
static char *format_longlong(char *end, long long v)
{
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    char *p = end;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--p = '-';
    return p;
}

/* A RESP header: '*' or '$', a count, CRLF. */
static int put_header(Buffer *b, char kind, Py_ssize_t n)
{
    char tmp[32];
    char *end = tmp + sizeof tmp - 2;
    end[0] = '\r';
    end[1] = '\n';
    char *p = format_longlong(end, n);
    *--p = kind;
    return put(b, p, tmp + sizeof tmp - p);
}

/* One bulk string: $<len> CRLF <bytes> CRLF. */
static int put_bulk(Buffer *b, const char *s, Py_ssize_t n)
{
    if (put_header(b, '$', n) < 0 || put(b, s, n) < 0)
        return -1;
    return put(b, "\r\n", 2);
}

static int put_bulk_str(Buffer *b, PyObject *text)
{
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(text, &n);
    return s == NULL ? -1 : put_bulk(b, s, n);
}

static int put_bulk_longlong(Buffer *b, long long v)
{
    char tmp[32];
    char *p = format_longlong(tmp + sizeof tmp, v);
    return put_bulk(b, p, tmp + sizeof tmp - p);
}

/* A float whose orjson text (Ryu's shortest digits, ~15 ns) is exactly its repr() (dtoa,
 * ~300 ns for 16-17 digits): finite, and not below 1e-4 in magnitude, where repr() switches
 * to an exponent and orjson does not. Exponents themselves are checked on the text. */
static inline int ryu_matches_repr(PyObject *value)
{
    if (!PyFloat_CheckExact(value))
        return 0;
    double x = PyFloat_AS_DOUBLE(value);
    return isfinite(x) && (x == 0.0 || fabs(x) >= 1e-4);
}

/* One feature value as encode_value() writes it. */
static int put_value(Buffer *b, PyObject *value)
{
    if (value == Py_None)
        return put_bulk(b, "", 0);
    if (PyFloat_CheckExact(value)) {
        /* What float.__repr__ calls: the same digits, '.0' on integral values, 'inf', 'nan'. */
        char *s = PyOS_double_to_string(PyFloat_AS_DOUBLE(value), 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
        if (s == NULL)
            return -1;
        int rc = put_bulk(b, s, (Py_ssize_t)strlen(s));
        PyMem_Free(s);
        return rc;
    }
    if (PyLong_CheckExact(value)) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow == 0)
            return v == -1 && PyErr_Occurred() ? -1 : put_bulk_longlong(b, v);
    }
    if (PyUnicode_CheckExact(value))
        return put_bulk_str(b, value);
    PyObject *text = PyObject_Str(value);
    if (text == NULL)
        return -1;
    int rc = put_bulk_str(b, text);
    Py_DECREF(text);
    return rc;
}

static int put_meta(Buffer *b, const char *name, PyObject *value)
{
    long long v = PyLong_AsLongLong(value);
    if (v == -1 && PyErr_Occurred())
        return -1;
    return put_bulk(b, name, (Py_ssize_t)strlen(name)) < 0 ? -1 : put_bulk_longlong(b, v);
}

static PyObject *s_entity, *s_columns, *s_values, *s_last_event_ms, *s_asof_ms;

/* The orjson texts of a row's floats that ryu_matches_repr(), in order, as one "[a,b,...]". */
static PyObject *float_texts(PyObject *dumps, PyObject **values, Py_ssize_t n)
{
    Py_ssize_t count = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        count += ryu_matches_repr(values[i]);
    if (count == 0)
        return PyBytes_FromStringAndSize("[]", 2);
    PyObject *floats = PyList_New(count);
    if (floats == NULL)
        return NULL;
    for (Py_ssize_t i = 0, j = 0; i < n; i++) {
        if (ryu_matches_repr(values[i]))
            PyList_SET_ITEM(floats, j++, Py_NewRef(values[i]));
    }
    PyObject *text = PyObject_Vectorcall(dumps, &floats, 1, NULL);
    Py_DECREF(floats);
    if (text != NULL && !PyBytes_Check(text)) {
        Py_DECREF(text);
        PyErr_SetString(PyExc_TypeError, "dumps must return bytes");
        return NULL;
    }
    return text;
}

static int put_row(Buffer *b, const char *prefix, Py_ssize_t prefix_len, PyObject *row, PyObject *wall,
                   PyObject *dumps)
{
    int rc = -1;
    PyObject *texts = NULL;
    PyObject *entity = PyObject_GetAttr(row, s_entity);
    PyObject *columns = entity ? PyObject_GetAttr(row, s_columns) : NULL;
    PyObject *values = columns ? PyObject_GetAttr(row, s_values) : NULL;
    PyObject *last = values ? PyObject_GetAttr(row, s_last_event_ms) : NULL;
    PyObject *asof = last ? PyObject_GetAttr(row, s_asof_ms) : NULL;
    PyObject *cols = NULL, *vals = NULL;
    if (asof == NULL)
        goto done;
    cols = PySequence_Fast(columns, "columns must be a sequence");
    vals = cols ? PySequence_Fast(values, "values must be a sequence") : NULL;
    if (vals == NULL)
        goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(cols);
    if (PySequence_Fast_GET_SIZE(vals) != n) {
        PyErr_SetString(PyExc_ValueError, "a row needs one value per column");
        goto done;
    }
    Py_ssize_t entity_len;
    const char *entity_s = PyUnicode_AsUTF8AndSize(entity, &entity_len);
    if (entity_s == NULL)
        goto done;
    /* HSET, the key, the columns and their values, three meta fields and their values. */
    if (put_header(b, '*', 2 + 2 * n + 6) < 0 || put_bulk(b, "HSET", 4) < 0)
        goto done;
    if (put_header(b, '$', prefix_len + entity_len) < 0 || put(b, prefix, prefix_len) < 0
        || put(b, entity_s, entity_len) < 0 || put(b, "\r\n", 2) < 0)
        goto done;
    PyObject **c = PySequence_Fast_ITEMS(cols), **v = PySequence_Fast_ITEMS(vals);
    texts = float_texts(dumps, v, n);
    if (texts == NULL)
        goto done;
    const char *token = PyBytes_AS_STRING(texts) + 1, *texts_end = token + PyBytes_GET_SIZE(texts) - 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyUnicode_Check(c[i])) {
            PyErr_SetString(PyExc_TypeError, "column names must be str");
            goto done;
        }
        if (put_bulk_str(b, c[i]) < 0)
            goto done;
        if (ryu_matches_repr(v[i]) && token < texts_end) {
            const char *end = token;
            while (end < texts_end && *end != ',' && *end != ']')
                end++;
            int written = memchr(token, 'e', end - token) == NULL ? put_bulk(b, token, end - token)
                                                                  : put_value(b, v[i]);
            token = end + 1;
            if (written < 0)
                goto done;
        } else if (put_value(b, v[i]) < 0) {
            goto done;
        }
    }
    if (put_meta(b, "_t", last) < 0 || put_meta(b, "_asof", asof) < 0 || put_meta(b, "_w", wall) < 0)
        goto done;
    rc = 0;
done:
    Py_XDECREF(texts);
    Py_XDECREF(vals);
    Py_XDECREF(cols);
    Py_XDECREF(asof);
    Py_XDECREF(last);
    Py_XDECREF(values);
    Py_XDECREF(columns);
    Py_XDECREF(entity);
    return rc;
}

static PyObject *hset_running(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "hset_running(prefix: bytes, rows, wall_ms: int, dumps)");
        return NULL;
    }
    PyObject *rows = PySequence_Fast(args[1], "rows must be a sequence");
    if (rows == NULL)
        return NULL;
    Buffer b = {NULL, 0, 0};
    const char *prefix = PyBytes_AS_STRING(args[0]);
    Py_ssize_t prefix_len = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(rows);
    PyObject **items = PySequence_Fast_ITEMS(rows);
    PyObject *out = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (put_row(&b, prefix, prefix_len, items[i], args[2], args[3]) < 0)
            goto done;
    }
    out = PyBytes_FromStringAndSize(b.data ? b.data : "", b.len);
done:
    PyMem_Free(b.data);
    Py_DECREF(rows);
    return out;
}

static PyMethodDef methods[] = {
    {"hset_running", (PyCFunction)(void (*)(void))hset_running, METH_FASTCALL,
     "hset_running(prefix, rows, wall_ms, dumps)\n--\n\n"
     "One RESP-encoded HSET per row of running values (key prefix + entity; columns, then\n"
     "_t, _asof and _w), concatenated. ``dumps`` is orjson.dumps, the fast float formatter."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_resp", "RESP encoding of the online store's writes.", -1, methods,
};

PyMODINIT_FUNC PyInit__resp(void)
{
    s_entity = PyUnicode_InternFromString("entity");
    s_columns = PyUnicode_InternFromString("columns");
    s_values = PyUnicode_InternFromString("values");
    s_last_event_ms = PyUnicode_InternFromString("last_event_ms");
    s_asof_ms = PyUnicode_InternFromString("asof_ms");
    if (!s_entity || !s_columns || !s_values || !s_last_event_ms || !s_asof_ms)
        return NULL;
    return PyModule_Create(&module_def);
}
