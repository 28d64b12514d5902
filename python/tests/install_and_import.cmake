# cmake -DBUILD_DIR=... -DWORK_DIR=... -DMODULE_DIR=... -DPYTHON=... -P install_and_import.cmake
# Installs the python component into a fresh prefix and imports the module from there alone.
file(REMOVE_RECURSE ${WORK_DIR})
set(prefix ${WORK_DIR}/prefix)
execute_process(COMMAND ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix} --component python
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cmake --install --component python failed (${rc}):\n${out}\n${err}")
endif()
file(GLOB installed ${prefix}/${MODULE_DIR}/swiftbalancer*.so)
if(NOT installed)
  message(FATAL_ERROR "no swiftbalancer module in ${prefix}/${MODULE_DIR}")
endif()
# -I: isolated (no user site, no PYTHONPATH, not the current folder); the prefix's folder only.
execute_process(
  COMMAND ${PYTHON} -I -c "import sys; sys.path.insert(0, '${prefix}/${MODULE_DIR}')
import swiftbalancer as sb
assert sb.__file__.startswith('${prefix}'), sb.__file__
p, _, _ = sb.rebalance_experts([[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86]], 16, 4, 2, 8,
                               algorithm='deepseek')
print(p.tolist())"
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT out MATCHES "^\\[\\[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1\\]\\]")
  message(FATAL_ERROR "the installed module did not work (${rc}):\n${out}\n${err}")
endif()
message(STATUS "installed module: ${installed}")
