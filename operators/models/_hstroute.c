/*
 * The routing of operators.models.hst.HSTStructure in C: which leaf a point reaches in each
 * tree, the sum of those leaves' path scores, and the increments of their masses.
 *
 * Why by hand: the structure is shared by every user and the masses are compact arrays
 * (hst.py explains the layout); no library routes a point through such trees. The pure
 * Python path (code generated for the structure: nested `if` on float constants) stays, and
 * runs when this extension is not built. Both give the same leaves and the same integer
 * sums, so the same scores bit for bit (tests/test_models_hst.py checks them side by side).
 * Here it is two to three and a half times faster (python -m operators.models.bench), and it
 * is on every event's path twice: the user's trees and the population's.
 *
 * A Router holds, per tree and internal node in heap order, the index of the node's feature
 * in `names` and its threshold. A point goes left when `x[name] < threshold`, as in Python:
 * a float (or an int exactly representable as a double) is compared in C, anything else
 * with Python's own `<`; NaN goes right. A missing feature raises KeyError, as `x[name]`
 * does, and the caller routes the point its own way (hst.py, "missing features").
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef struct {
    PyObject_HEAD
    int n_trees;
    int height;
    Py_ssize_t n_internal; /* 2**height - 1 internal nodes per tree */
    Py_ssize_t n_leaves;   /* 2**height leaves per tree */
    PyObject *names;       /* tuple of the feature names the trees use */
    PyObject *thr_objs;    /* tuple of the thresholds as floats (Python's `<` for others) */
    int *feat;             /* n_trees * n_internal indices into names */
    double *thr;           /* n_trees * n_internal thresholds */
} Router;

/* One point's features, loaded once: a double, or the object when only Python compares it. */
typedef struct {
    double v;
    PyObject *obj; /* NULL when v is exact; borrowed from the point */
    PyObject *own; /* a reference this call holds (a mapping other than a dict), or NULL */
} Value;

#define MAX_NAMES 256
#define MAX_TREES 1024

static void Router_dealloc(Router *self) {
    Py_XDECREF(self->names);
    Py_XDECREF(self->thr_objs);
    PyMem_Free(self->feat);
    PyMem_Free(self->thr);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Router_init(Router *self, PyObject *args, PyObject *kwds) {
    PyObject *names, *feats, *thrs;
    static char *kwlist[] = {"names", "split_features", "thresholds", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OO", kwlist, &PyTuple_Type, &names, &feats,
                                     &thrs))
        return -1;
    Py_ssize_t n_names = PyTuple_GET_SIZE(names);
    if (n_names < 1 || n_names > MAX_NAMES) {
        PyErr_SetString(PyExc_ValueError, "names: 1 to 256 feature names");
        return -1;
    }
    PyObject *fseq = PySequence_Fast(feats, "split_features: a list of lists");
    if (fseq == NULL) return -1;
    PyObject *tseq = PySequence_Fast(thrs, "thresholds: a list of lists");
    if (tseq == NULL) {
        Py_DECREF(fseq);
        return -1;
    }
    Py_ssize_t n_trees = PySequence_Fast_GET_SIZE(fseq);
    if (n_trees < 1 || n_trees > MAX_TREES || PySequence_Fast_GET_SIZE(tseq) != n_trees) {
        PyErr_SetString(PyExc_ValueError, "split_features and thresholds: 1 to 1024 trees each");
        goto fail;
    }
    Py_ssize_t n_internal = -1;
    for (Py_ssize_t t = 0; t < n_trees; t++) {
        Py_ssize_t a = PySequence_Size(PySequence_Fast_GET_ITEM(fseq, t));
        Py_ssize_t b = PySequence_Size(PySequence_Fast_GET_ITEM(tseq, t));
        if (a < 0 || b < 0) goto fail;
        if (n_internal < 0) n_internal = a;
        if (a != n_internal || b != n_internal) {
            PyErr_SetString(PyExc_ValueError, "every tree needs the same number of nodes");
            goto fail;
        }
    }
    int height = 0;
    while (((Py_ssize_t)1 << height) - 1 < n_internal) height++;
    if (((Py_ssize_t)1 << height) - 1 != n_internal || height < 1 || height > 20) {
        PyErr_SetString(PyExc_ValueError, "each tree needs 2**height - 1 nodes, height 1 to 20");
        goto fail;
    }
    Py_CLEAR(self->names); /* (until the end: a failed init leaves a Router that refuses) */
    PyMem_Free(self->feat);
    PyMem_Free(self->thr);
    self->feat = PyMem_Malloc(sizeof(int) * n_trees * n_internal);
    self->thr = PyMem_Malloc(sizeof(double) * n_trees * n_internal);
    if (self->feat == NULL || self->thr == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    PyObject *thr_objs = PyTuple_New(n_trees * n_internal);
    if (thr_objs == NULL) goto fail;
    Py_XSETREF(self->thr_objs, thr_objs);
    for (Py_ssize_t t = 0; t < n_trees; t++) {
        for (Py_ssize_t i = 0; i < n_internal; i++) {
            PyObject *fo = PySequence_GetItem(PySequence_Fast_GET_ITEM(fseq, t), i);
            if (fo == NULL) goto fail;
            long f = PyLong_AsLong(fo);
            Py_DECREF(fo);
            if (f == -1 && PyErr_Occurred()) goto fail;
            if (f < 0 || f >= n_names) {
                PyErr_SetString(PyExc_ValueError, "a split feature is not an index of names");
                goto fail;
            }
            PyObject *to = PySequence_GetItem(PySequence_Fast_GET_ITEM(tseq, t), i);
            if (to == NULL) goto fail;
            double v = PyFloat_AsDouble(to);
            Py_DECREF(to);
            if (v == -1.0 && PyErr_Occurred()) goto fail;
            PyObject *vo = PyFloat_FromDouble(v);
            if (vo == NULL) goto fail;
            PyTuple_SET_ITEM(thr_objs, t * n_internal + i, vo);
            self->feat[t * n_internal + i] = (int)f;
            self->thr[t * n_internal + i] = v;
        }
    }
    Py_INCREF(names);
    Py_XSETREF(self->names, names);
    self->n_trees = (int)n_trees;
    self->height = height;
    self->n_internal = n_internal;
    self->n_leaves = n_internal + 1;
    Py_DECREF(fseq);
    Py_DECREF(tseq);
    return 0;
fail:
    Py_DECREF(fseq);
    Py_DECREF(tseq);
    return -1;
}

static void release(Value *vals, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) Py_CLEAR(vals[i].own);
}

/* Load the point's features; 0 on success, -1 with an exception set (KeyError if missing).
   Whatever it returns, release(vals, number of names) frees what it holds. */
static int load(Router *self, PyObject *x, Value *vals) {
    Py_ssize_t n = PyTuple_GET_SIZE(self->names);
    for (Py_ssize_t i = 0; i < n; i++) vals[i].own = NULL;
    int exact_dict = PyDict_CheckExact(x);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(self->names, i);
        PyObject *v;
        if (exact_dict) {
            v = PyDict_GetItemWithError(x, name); /* borrowed: the dict holds it */
            if (v == NULL) {
                if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, name);
                return -1;
            }
        } else {
            v = vals[i].own = PyObject_GetItem(x, name);
            if (v == NULL) return -1;
        }
        vals[i].obj = NULL;
        if (PyFloat_Check(v)) {
            vals[i].v = PyFloat_AS_DOUBLE(v);
        } else if (PyLong_Check(v)) {
            int overflow;
            long long k = PyLong_AsLongLongAndOverflow(v, &overflow);
            if (k == -1 && PyErr_Occurred()) return -1;
            if (overflow || k > (1LL << 53) || k < -(1LL << 53))
                vals[i].obj = v; /* not exact as a double: Python compares it */
            else
                vals[i].v = (double)k;
        } else {
            vals[i].obj = v;
        }
    }
    return 0;
}

/* The leaf index (tree * n_leaves + leaf) the point reaches in tree t; -1 on error. */
static Py_ssize_t route(Router *self, const Value *vals, int t) {
    Py_ssize_t base = (Py_ssize_t)t * self->n_internal;
    Py_ssize_t node = 0;
    for (int d = 0; d < self->height; d++) {
        const Value *v = &vals[self->feat[base + node]];
        int left;
        if (v->obj == NULL) {
            left = v->v < self->thr[base + node];
        } else {
            left = PyObject_RichCompareBool(v->obj, PyTuple_GET_ITEM(self->thr_objs, base + node),
                                            Py_LT);
            if (left < 0) return -1;
        }
        node = left ? 2 * node + 1 : 2 * node + 2;
    }
    return (Py_ssize_t)t * self->n_leaves + node - self->n_internal;
}

/* A view of an array of unsigned counts or scores (typecodes B, H, I, L, Q). */
static int get_view(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t need) {
    if (PyObject_GetBuffer(obj, view, PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    const char *fmt = view->format ? view->format : "B";
    if (fmt[0] == '<' || fmt[0] == '@' || fmt[0] == '=') fmt++;
    if (!(fmt[0] == 'B' || fmt[0] == 'H' || fmt[0] == 'I' || fmt[0] == 'L' || fmt[0] == 'Q') ||
        fmt[1] != '\0' ||
        !(view->itemsize == 1 || view->itemsize == 2 || view->itemsize == 4 ||
          view->itemsize == 8)) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_TypeError, "masses: an array of unsigned integers");
        return -1;
    }
    if (view->len / view->itemsize < need) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_IndexError, "masses: shorter than n_trees * 2**height");
        return -1;
    }
    return 0;
}

static inline unsigned long long read_at(const Py_buffer *v, Py_ssize_t k) {
    switch (v->itemsize) {
    case 1: return ((const uint8_t *)v->buf)[k];
    case 2: return ((const uint16_t *)v->buf)[k];
    case 4: return ((const uint32_t *)v->buf)[k];
    default: return ((const uint64_t *)v->buf)[k];
    }
}

/* l[k] += 1, refused past the type's maximum as array's own item assignment refuses it. */
static int incr_at(Py_buffer *v, Py_ssize_t k) {
    switch (v->itemsize) {
    case 1:
        if (((uint8_t *)v->buf)[k] == UINT8_MAX) goto over;
        ((uint8_t *)v->buf)[k]++;
        return 0;
    case 2:
        if (((uint16_t *)v->buf)[k] == UINT16_MAX) goto over;
        ((uint16_t *)v->buf)[k]++;
        return 0;
    case 4:
        if (((uint32_t *)v->buf)[k] == UINT32_MAX) goto over;
        ((uint32_t *)v->buf)[k]++;
        return 0;
    default:
        if (((uint64_t *)v->buf)[k] == UINT64_MAX) goto over;
        ((uint64_t *)v->buf)[k]++;
        return 0;
    }
over:
    PyErr_SetString(PyExc_OverflowError, "a leaf mass is at its type's maximum");
    return -1;
}

/* What each method does with the leaves: add their scores, count them, list them. */
enum { DO_SCORE = 1, DO_LEARN = 2, DO_LEAVES = 4 };

static int ready(Router *self) {
    if (self->names != NULL) return 1;
    PyErr_SetString(PyExc_RuntimeError, "Router not initialised");
    return 0;
}

static PyObject *run(Router *self, PyObject *x, PyObject *l, PyObject *s, int what) {
    if (!ready(self)) return NULL;
    Value vals[MAX_NAMES];
    Py_ssize_t n_names = PyTuple_GET_SIZE(self->names);
    if (load(self, x, vals) < 0) {
        release(vals, n_names);
        return NULL;
    }
    Py_ssize_t need = (Py_ssize_t)self->n_trees * self->n_leaves;
    Py_buffer sv, lv;
    if ((what & DO_SCORE) && get_view(s, &sv, 0, need) < 0) {
        release(vals, n_names);
        return NULL;
    }
    if ((what & DO_LEARN) && get_view(l, &lv, 1, need) < 0) {
        if (what & DO_SCORE) PyBuffer_Release(&sv);
        release(vals, n_names);
        return NULL;
    }
    PyObject *leaves = NULL;
    if (what & DO_LEAVES) {
        leaves = PyTuple_New(self->n_trees);
        if (leaves == NULL) goto fail;
    }
    unsigned long long total = 0;
    for (int t = 0; t < self->n_trees; t++) {
        Py_ssize_t k = route(self, vals, t);
        if (k < 0) goto fail;
        if (what & DO_SCORE) total += read_at(&sv, k);
        if ((what & DO_LEARN) && incr_at(&lv, k) < 0) goto fail;
        if (what & DO_LEAVES) {
            PyObject *ko = PyLong_FromSsize_t(k);
            if (ko == NULL) goto fail;
            PyTuple_SET_ITEM(leaves, t, ko);
        }
    }
    if (what & DO_SCORE) PyBuffer_Release(&sv);
    if (what & DO_LEARN) PyBuffer_Release(&lv);
    release(vals, n_names);
    if (!(what & DO_SCORE)) Py_RETURN_NONE;
    PyObject *tot = PyLong_FromUnsignedLongLong(total);
    if (!(what & DO_LEAVES) || tot == NULL) {
        Py_XDECREF(leaves);
        return tot;
    }
    PyObject *out = PyTuple_Pack(2, tot, leaves);
    Py_DECREF(tot);
    Py_DECREF(leaves);
    return out;
fail:
    if (what & DO_SCORE) PyBuffer_Release(&sv);
    if (what & DO_LEARN) PyBuffer_Release(&lv);
    release(vals, n_names);
    Py_XDECREF(leaves);
    return NULL;
}

static PyObject *Router_score(Router *self, PyObject *const *args, Py_ssize_t n) {
    if (n != 2) return PyErr_Format(PyExc_TypeError, "score(x, s) takes 2 arguments");
    return run(self, args[0], NULL, args[1], DO_SCORE);
}

static PyObject *Router_learn(Router *self, PyObject *const *args, Py_ssize_t n) {
    if (n != 2) return PyErr_Format(PyExc_TypeError, "learn(x, l) takes 2 arguments");
    return run(self, args[0], args[1], NULL, DO_LEARN);
}

static PyObject *Router_score_learn(Router *self, PyObject *const *args, Py_ssize_t n) {
    if (n != 3) return PyErr_Format(PyExc_TypeError, "score_learn(x, l, s) takes 3 arguments");
    return run(self, args[0], args[1], args[2], DO_SCORE | DO_LEARN);
}

static PyObject *Router_score_leaves(Router *self, PyObject *const *args, Py_ssize_t n) {
    if (n != 2) return PyErr_Format(PyExc_TypeError, "score_leaves(x, s) takes 2 arguments");
    return run(self, args[0], NULL, args[1], DO_SCORE | DO_LEAVES);
}

/* add(l, leaves): l[k] += 1 for each k of leaves (what score_leaves returned), in order. */
static PyObject *Router_add(Router *self, PyObject *const *args, Py_ssize_t n) {
    if (n != 2) return PyErr_Format(PyExc_TypeError, "add(l, leaves) takes 2 arguments");
    if (!ready(self)) return NULL;
    PyObject *seq = PySequence_Fast(args[1], "leaves: a sequence of ints");
    if (seq == NULL) return NULL;
    Py_buffer lv;
    if (get_view(args[0], &lv, 1, 0) < 0) {
        Py_DECREF(seq);
        return NULL;
    }
    Py_ssize_t size = lv.len / lv.itemsize;
    Py_ssize_t m = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < m; i++) {
        Py_ssize_t k = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(seq, i));
        if (k == -1 && PyErr_Occurred()) goto fail;
        if (k < 0 || k >= size) {
            PyErr_SetString(PyExc_IndexError, "array index out of range");
            goto fail;
        }
        if (incr_at(&lv, k) < 0) goto fail;
    }
    PyBuffer_Release(&lv);
    Py_DECREF(seq);
    Py_RETURN_NONE;
fail:
    PyBuffer_Release(&lv);
    Py_DECREF(seq);
    return NULL;
}

static int write_at(Py_buffer *v, Py_ssize_t k, unsigned long long x) {
    switch (v->itemsize) {
    case 1:
        if (x > UINT8_MAX) goto over;
        ((uint8_t *)v->buf)[k] = (uint8_t)x;
        return 0;
    case 2:
        if (x > UINT16_MAX) goto over;
        ((uint16_t *)v->buf)[k] = (uint16_t)x;
        return 0;
    case 4:
        if (x > UINT32_MAX) goto over;
        ((uint32_t *)v->buf)[k] = (uint32_t)x;
        return 0;
    default:
        ((uint64_t *)v->buf)[k] = (uint64_t)x;
        return 0;
    }
over:
    PyErr_SetString(PyExc_OverflowError, "a path score is beyond its type's maximum");
    return -1;
}

/* reference(r, s, size_limit) -> whether r has any mass. For each leaf, s[leaf] = river's
   path score from the reference masses r: the sum of node mass * 2**depth from the root down
   the leaf's path, stopping below a node whose mass is under size_limit (hst.py's
   HSTStructure._set_reference, which does it with NumPy where this is not built; the same
   integers). A node's mass is the sum of its leaves'. */
static PyObject *Router_reference(Router *self, PyObject *const *args, Py_ssize_t n) {
    if (n != 3) return PyErr_Format(PyExc_TypeError, "reference(r, s, size_limit) takes 3 arguments");
    if (!ready(self)) return NULL;
    double limit = PyFloat_AsDouble(args[2]);
    if (limit == -1.0 && PyErr_Occurred()) return NULL;
    Py_ssize_t nl = self->n_leaves, need = (Py_ssize_t)self->n_trees * nl;
    Py_buffer rv, sv;
    if (get_view(args[0], &rv, 0, need) < 0) return NULL;
    if (get_view(args[1], &sv, 1, need) < 0) {
        PyBuffer_Release(&rv);
        return NULL;
    }
    /* one tree's node masses in heap order: leaves at n_internal.., parents above them */
    unsigned long long *mass = PyMem_Malloc(sizeof(unsigned long long) * (2 * nl - 1));
    if (mass == NULL) {
        PyBuffer_Release(&rv);
        PyBuffer_Release(&sv);
        return PyErr_NoMemory();
    }
    int any = 0;
    Py_ssize_t ni = self->n_internal;
    for (int t = 0; t < self->n_trees; t++) {
        for (Py_ssize_t j = 0; j < nl; j++) {
            mass[ni + j] = read_at(&rv, (Py_ssize_t)t * nl + j);
            if (mass[ni + j]) any = 1;
        }
        for (Py_ssize_t i = ni - 1; i >= 0; i--) mass[i] = mass[2 * i + 1] + mass[2 * i + 2];
        for (Py_ssize_t j = 0; j < nl; j++) {
            /* the leaf's path from the root: node indices from its heap index's bits */
            Py_ssize_t leaf = ni + j;
            unsigned long long acc = mass[0];
            int live = (double)mass[0] >= limit;
            for (int d = 1; d <= self->height; d++) {
                Py_ssize_t node = ((leaf + 1) >> (self->height - d)) - 1;
                if (live) acc += mass[node] << d;
                live = live && (double)mass[node] >= limit;
            }
            if (write_at(&sv, (Py_ssize_t)t * nl + j, acc) < 0) {
                PyMem_Free(mass);
                PyBuffer_Release(&rv);
                PyBuffer_Release(&sv);
                return NULL;
            }
        }
    }
    PyMem_Free(mass);
    PyBuffer_Release(&rv);
    PyBuffer_Release(&sv);
    return PyBool_FromLong(any);
}

static PyMethodDef Router_methods[] = {
    {"score", (PyCFunction)(void (*)(void))Router_score, METH_FASTCALL,
     "score(x, s) -> the sum over the trees of s at the leaf x reaches"},
    {"learn", (PyCFunction)(void (*)(void))Router_learn, METH_FASTCALL,
     "learn(x, l): l[leaf] += 1 for the leaf x reaches in each tree"},
    {"score_learn", (PyCFunction)(void (*)(void))Router_score_learn, METH_FASTCALL,
     "score_learn(x, l, s) -> score(x, s), then learn(x, l), in one pass"},
    {"score_leaves", (PyCFunction)(void (*)(void))Router_score_leaves, METH_FASTCALL,
     "score_leaves(x, s) -> (score(x, s), the leaf index x reaches in each tree)"},
    {"add", (PyCFunction)(void (*)(void))Router_add, METH_FASTCALL,
     "add(l, leaves): l[k] += 1 for each k of leaves"},
    {"reference", (PyCFunction)(void (*)(void))Router_reference, METH_FASTCALL,
     "reference(r, s, size_limit) -> any mass in r; s = the leaves' path scores from r"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RouterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "operators.models._hstroute.Router",
    .tp_doc = "Router(names, split_features, thresholds): the trees of an HSTStructure in C",
    .tp_basicsize = sizeof(Router),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Router_init,
    .tp_dealloc = (destructor)Router_dealloc,
    .tp_methods = Router_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "operators.models._hstroute",
    .m_doc = "The routing of HSTStructure's trees in C (see operators/models/hst.py).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__hstroute(void) {
    if (PyType_Ready(&RouterType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&RouterType);
    if (PyModule_AddObject(m, "Router", (PyObject *)&RouterType) < 0) {
        Py_DECREF(&RouterType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
