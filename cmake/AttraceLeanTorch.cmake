# Lean LibTorch for attrace-core (docs/performance.md, "Process start"): copies of libtorch_cpu
# (and libtorch_cuda) without the NEEDED entries they take no symbol from, found first through
# attrace-core's RUNPATH; cmake/lean-torch.sh says how they are made and how each build of
# attrace-core is checked to bind every symbol exactly as with the system libraries.
set(ATTRACE_LEAN_TORCH "AUTO" CACHE STRING "Lean LibTorch copies for attrace-core: AUTO (when patchelf is found), ON or OFF")
set_property(CACHE ATTRACE_LEAN_TORCH PROPERTY STRINGS AUTO ON OFF)
set(ATTRACE_LEAN_TORCH_DIR "")

if(NOT ATTRACE_LEAN_TORCH STREQUAL "OFF" AND CMAKE_SYSTEM_NAME STREQUAL "Linux")
  find_program(ATTRACE_PATCHELF patchelf)
  if(NOT ATTRACE_PATCHELF)
    if(ATTRACE_LEAN_TORCH STREQUAL "ON")
      message(FATAL_ERROR "ATTRACE_LEAN_TORCH=ON needs patchelf (apt-get install patchelf)")
    endif()
    message(STATUS "lean LibTorch: patchelf not found, skipped (attrace starts ~0.2 s slower)")
  else()
    get_filename_component(_torch_dir "${TORCH_LIBRARY}" DIRECTORY)
    set(_libs "")
    foreach(_name torch_cpu torch_cuda)
      if(EXISTS "${_torch_dir}/lib${_name}.so")
        list(APPEND _libs "${_torch_dir}/lib${_name}.so")
      endif()
    endforeach()
    set(_dir "${CMAKE_BINARY_DIR}/lean-torch")
    # Made again when a library or the script changes (a stamp of their paths and times).
    set(_stamp "")
    foreach(_l IN LISTS _libs ITEMS "${CMAKE_CURRENT_LIST_DIR}/lean-torch.sh")
      file(TIMESTAMP "${_l}" _t "%s" UTC)
      get_filename_component(_real "${_l}" REALPATH)
      string(APPEND _stamp "${_real} ${_t}\n")
    endforeach()
    set(_old "")
    if(EXISTS "${_dir}/stamp.txt")
      file(READ "${_dir}/stamp.txt" _old)
    endif()
    if(NOT _old STREQUAL _stamp)
      execute_process(COMMAND sh "${CMAKE_CURRENT_LIST_DIR}/lean-torch.sh" make "${_dir}" ${_libs}
                      RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
      if(_rc EQUAL 0)
        file(WRITE "${_dir}/stamp.txt" "${_stamp}")
      endif()
      message(STATUS "lean LibTorch: ${_out}${_err}")
    endif()
    if(EXISTS "${_dir}/removed.txt")
      set(ATTRACE_LEAN_TORCH_DIR "${_dir}")
    endif()
  endif()
endif()

# attrace-core (`target`) loads the lean copies first, in the build tree and once installed; each
# link is checked (bindings identical to the system libraries' or the copies are removed).
function(attrace_use_lean_torch target)
  if(NOT ATTRACE_LEAN_TORCH_DIR)
    return()
  endif()
  set_target_properties(${target} PROPERTIES BUILD_RPATH "${ATTRACE_LEAN_TORCH_DIR}"
                                             INSTALL_RPATH "$ORIGIN/../lib/attrace")
  set(_script "${PROJECT_SOURCE_DIR}/cmake/lean-torch.sh")
  add_custom_command(TARGET ${target} POST_BUILD
                     COMMAND sh -c "sh \"$0\" check \"$1\" \"$2\" || sh \"$0\" drop \"$1\""
                             "${_script}" "${ATTRACE_LEAN_TORCH_DIR}" "$<TARGET_FILE:${target}>"
                     VERBATIM)
  file(GLOB _copies "${ATTRACE_LEAN_TORCH_DIR}/*.so*")
  install(FILES ${_copies} DESTINATION lib/attrace)
endfunction()
