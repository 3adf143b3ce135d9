/*
 * engine.events._batch_check: the features pipeline's batch validator, compiled.
 *
 * interaction_columns(raws, loads, event_types, min_time, max_time) parses every message of a
 * batch with `loads` (orjson.loads) and checks it against the interaction rules of
 * engine/events/validation.py, building the six columns of InteractionColumns as it goes.
 * It answers None as soon as one message is not a clean, valid JSON interaction: the caller
 * then validates message by message to say which are bad and why. So this code only ever
 * accepts; it never has to explain, and the Python validator stays the one statement of the
 * rules (tests check that both agree on every kind of bad input).
 *
 * Why C: the same checks written a column at a time in Python cost ~0.8 us an event on top
 * of the parse, about a fifth of the whole pipeline's CPU (benchmarks/ingest_stages.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

#define MAX_ID_LEN 256
#define MAX_MAP_KEYS 64

/* Interned field names, created once at import. */
static PyObject *k_user_id, *k_item_id, *k_event_type, *k_event_time, *k_context, *k_request_id;

/* An id: a str of 1..MAX_ID_LEN characters. */
static inline int id_ok(PyObject *v)
{
    if (!PyUnicode_CheckExact(v))
        return 0;
    Py_ssize_t n = PyUnicode_GET_LENGTH(v);
    return n > 0 && n <= MAX_ID_LEN;
}

/* A context: a flat map of at most MAX_MAP_KEYS scalars under id-like keys.
 * Scalars: str, bool, int within int64, finite float. */
static int context_ok(PyObject *ctx)
{
    if (!PyDict_CheckExact(ctx) || PyDict_GET_SIZE(ctx) > MAX_MAP_KEYS)
        return 0;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(ctx, &pos, &key, &value)) {
        if (!id_ok(key))
            return 0;
        if (PyUnicode_CheckExact(value) || PyBool_Check(value))
            continue;
        if (PyLong_CheckExact(value)) {
            int overflow = 0;
            PyLong_AsLongLongAndOverflow(value, &overflow);
            if (overflow != 0)
                return 0;
            continue;
        }
        if (PyFloat_CheckExact(value) && isfinite(PyFloat_AS_DOUBLE(value)))
            continue;
        return 0;
    }
    return 1;
}

/* A required field read from a parsed message (borrowed; NULL when absent, no error set). */
static inline PyObject *field(PyObject *doc, PyObject *name)
{
    return PyDict_GetItemWithError(doc, name);
}

enum { USER, ITEM, TYPE, TIME, CONTEXT, REQUEST, NCOLUMNS };

static PyObject *interaction_columns(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "interaction_columns(raws, loads, event_types, min_time, max_time)");
        return NULL;
    }
    PyObject *raws = args[0], *loads = args[1], *event_types = args[2];
    if (!PyList_CheckExact(raws) || !PyDict_CheckExact(event_types)) {
        PyErr_SetString(PyExc_TypeError, "raws must be a list and event_types a dict");
        return NULL;
    }
    long long min_time = PyLong_AsLongLong(args[3]);
    long long max_time = PyLong_AsLongLong(args[4]);
    if (PyErr_Occurred())
        return NULL;

    Py_ssize_t n = PyList_GET_SIZE(raws);
    PyObject *columns[NCOLUMNS] = {NULL};
    for (int c = 0; c < NCOLUMNS; c++) {
        columns[c] = PyList_New(n);
        if (columns[c] == NULL)
            goto error;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *raw = PyList_GET_ITEM(raws, i);
        if (!PyBytes_CheckExact(raw) || PyBytes_GET_SIZE(raw) == 0 || PyBytes_AS_STRING(raw)[0] != '{')
            goto reject;
        PyObject *doc = PyObject_Vectorcall(loads, &raw, 1, NULL);
        if (doc == NULL) {
            /* Undecodable (orjson.JSONDecodeError) or odder: the per-message path says why. */
            if (!PyErr_ExceptionMatches(PyExc_Exception))
                goto error;
            PyErr_Clear();
            goto reject;
        }
        if (!PyDict_CheckExact(doc)) {
            Py_DECREF(doc);
            goto reject;
        }
        PyObject *user = field(doc, k_user_id), *item = field(doc, k_item_id);
        PyObject *type = field(doc, k_event_type), *time = field(doc, k_event_time);
        PyObject *context = field(doc, k_context), *request = field(doc, k_request_id);
        PyObject *canonical_type = NULL;
        int ok = user != NULL && item != NULL && type != NULL && time != NULL && !PyErr_Occurred()
                 && id_ok(user) && id_ok(item) && PyUnicode_CheckExact(type) && PyLong_CheckExact(time)
                 && (request == NULL || request == Py_None || id_ok(request))
                 && (context == NULL || context == Py_None || context_ok(context));
        if (ok) {
            /* The interned enum value: later set and dict lookups compare by identity. */
            canonical_type = PyDict_GetItemWithError(event_types, type);
            int overflow = 0;
            long long t = PyLong_AsLongLongAndOverflow(time, &overflow);
            ok = canonical_type != NULL && overflow == 0 && t >= min_time && t <= max_time;
        }
        if (!ok) {
            Py_DECREF(doc);
            if (PyErr_Occurred())
                goto error;
            goto reject;
        }
        PyObject *ctx = (context == NULL || context == Py_None) ? PyDict_New() : Py_NewRef(context);
        if (ctx == NULL) {
            Py_DECREF(doc);
            goto error;
        }
        PyList_SET_ITEM(columns[USER], i, Py_NewRef(user));
        PyList_SET_ITEM(columns[ITEM], i, Py_NewRef(item));
        PyList_SET_ITEM(columns[TYPE], i, Py_NewRef(canonical_type));
        PyList_SET_ITEM(columns[TIME], i, Py_NewRef(time));
        PyList_SET_ITEM(columns[CONTEXT], i, ctx);
        PyList_SET_ITEM(columns[REQUEST], i, Py_NewRef(request == NULL ? Py_None : request));
        Py_DECREF(doc);
    }
    return Py_BuildValue("(NNNNNN)", columns[0], columns[1], columns[2], columns[3], columns[4], columns[5]);

reject:
    for (int c = 0; c < NCOLUMNS; c++)
        Py_XDECREF(columns[c]);
    Py_RETURN_NONE;
error:
    for (int c = 0; c < NCOLUMNS; c++)
        Py_XDECREF(columns[c]);
    return NULL;
}

static PyObject *limits(PyObject *module, PyObject *unused)
{
    return Py_BuildValue("(ii)", MAX_ID_LEN, MAX_MAP_KEYS);
}

static PyMethodDef methods[] = {
    {"limits", limits, METH_NOARGS,
     "limits()\n--\n\n(MAX_ID_LEN, MAX_MAP_KEYS) as compiled; engine/events/validation.py checks they are its own."},
    {"interaction_columns", (PyCFunction)(void (*)(void))interaction_columns, METH_FASTCALL,
     "interaction_columns(raws, loads, event_types, min_time, max_time)\n--\n\n"
     "The six interaction columns (user_id, item_id, event_type, event_time, context,\n"
     "request_id) of a list of raw JSON messages, or None when any message is not a valid\n"
     "interaction. ``event_types`` maps each accepted type to the object stored for it."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_batch_check", "Compiled batch validation of interactions.", -1, methods,
};

PyMODINIT_FUNC PyInit__batch_check(void)
{
    k_user_id = PyUnicode_InternFromString("user_id");
    k_item_id = PyUnicode_InternFromString("item_id");
    k_event_type = PyUnicode_InternFromString("event_type");
    k_event_time = PyUnicode_InternFromString("event_time");
    k_context = PyUnicode_InternFromString("context");
    k_request_id = PyUnicode_InternFromString("request_id");
    if (!k_user_id || !k_item_id || !k_event_type || !k_event_time || !k_context || !k_request_id)
        return NULL;
    return PyModule_Create(&module_def);
}
