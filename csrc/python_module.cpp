// Only in the Python builds (JIT and setup.py's optional ahead-of-time build), never in the CMake library.
// The library is loaded with torch.ops.load_library, but an ahead-of-time build by setuptools must still be an
// importable extension module named ghostkernels._C; an empty module is all that needs.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
