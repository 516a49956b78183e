# Linux dependencies under the names common/, agent/ and collector/ link.
#
# FIREDRILL_STATIC_AGENT links firedrill-agent against the static archives Debian ships for
# OpenSSL, yaml-cpp and c-ares, against a static libstdc++/libgcc, and compiles spdlog and fmt
# in (common/spdlog_builtin.cpp: Debian ships them only shared, and they need the shared
# libstdc++). The agent then maps only libc and ld.so (glibc 2.36 or later: DT_RELR), and only
# the code it uses of the rest (docs/BENCHMARKS.md, footprint). The collector, the CLI and the
# test programs keep the shared libraries. A target opts in with firedrill_static_deps(); the
# link interfaces below pick static or shared per target through its FIREDRILL_STATIC_DEPS
# property.
if(FIREDRILL_SANITIZE)
  set(_static_agent_default OFF)  # ASan wants the shared libstdc++ it intercepts
else()
  set(_static_agent_default ON)
endif()
option(FIREDRILL_STATIC_AGENT
  "Link firedrill-agent against static OpenSSL, yaml-cpp, c-ares and libstdc++" ${_static_agent_default})

if(FIREDRILL_STATIC_AGENT)
  set(_missing "")
  foreach(_lib ssl crypto yaml-cpp cares)
    string(MAKE_C_IDENTIFIER "FIREDRILL_STATIC_${_lib}" _var)
    find_library(${_var} NAMES lib${_lib}.a)
    if(NOT ${_var})
      list(APPEND _missing lib${_lib}.a)
    endif()
  endforeach()
  if(_missing)
    message(FATAL_ERROR "FIREDRILL_STATIC_AGENT needs ${_missing} (Debian: libssl-dev, "
                        "libyaml-cpp-dev, libc-ares-dev); or configure with -DFIREDRILL_STATIC_AGENT=OFF")
  endif()
  add_library(firedrill_static_crypto STATIC IMPORTED)
  set_target_properties(firedrill_static_crypto PROPERTIES
    IMPORTED_LOCATION ${FIREDRILL_STATIC_crypto}
    INTERFACE_INCLUDE_DIRECTORIES "${OPENSSL_INCLUDE_DIR}"
    INTERFACE_LINK_LIBRARIES "Threads::Threads;${CMAKE_DL_LIBS}")
  add_library(firedrill_static_ssl STATIC IMPORTED)
  set_target_properties(firedrill_static_ssl PROPERTIES
    IMPORTED_LOCATION ${FIREDRILL_STATIC_ssl}
    INTERFACE_LINK_LIBRARIES firedrill_static_crypto)
  add_library(firedrill_static_yaml STATIC IMPORTED)
  set_target_properties(firedrill_static_yaml PROPERTIES
    IMPORTED_LOCATION ${FIREDRILL_STATIC_yaml_cpp}
    INTERFACE_INCLUDE_DIRECTORIES "$<TARGET_PROPERTY:yaml-cpp,INTERFACE_INCLUDE_DIRECTORIES>")
  add_library(firedrill_static_cares STATIC IMPORTED)
  set_target_properties(firedrill_static_cares PROPERTIES
    IMPORTED_LOCATION ${FIREDRILL_STATIC_cares}
    INTERFACE_INCLUDE_DIRECTORIES "${CARES_INCLUDE_DIRS}")
  # With sections per function, the static agent's link drops what nothing calls.
  add_compile_options(-ffunction-sections -fdata-sections)
  set(_pick "$<BOOL:$<TARGET_PROPERTY:FIREDRILL_STATIC_DEPS>>")
  add_library(firedrill_spdlog_builtin STATIC ${PROJECT_SOURCE_DIR}/common/spdlog_builtin.cpp)
  # PUBLIC: the agent's own main.cpp must see spdlog as a compiled library too, or it would
  # get a header-only spdlog with a second registry (tests/integration/test_probes_web.cpp).
  target_compile_definitions(firedrill_spdlog_builtin PUBLIC
    $<TARGET_PROPERTY:spdlog::spdlog,INTERFACE_COMPILE_DEFINITIONS>)
  target_include_directories(firedrill_spdlog_builtin PUBLIC
    $<TARGET_PROPERTY:spdlog::spdlog,INTERFACE_INCLUDE_DIRECTORIES>)
  target_link_libraries(firedrill_spdlog_builtin INTERFACE Threads::Threads)
  set(FIREDRILL_OPENSSL "$<IF:${_pick},firedrill_static_ssl,OpenSSL::SSL>")
  set(FIREDRILL_YAML "$<IF:${_pick},firedrill_static_yaml,yaml-cpp>")
  set(FIREDRILL_CARES "$<IF:${_pick},firedrill_static_cares,PkgConfig::CARES>")
  set(FIREDRILL_SPDLOG "$<IF:${_pick},firedrill_spdlog_builtin,spdlog::spdlog>")
else()
  set(FIREDRILL_OPENSSL OpenSSL::SSL)
  set(FIREDRILL_YAML yaml-cpp)
  set(FIREDRILL_CARES PkgConfig::CARES)
  set(FIREDRILL_SPDLOG spdlog::spdlog)
endif()

# Marks an executable to link the static dependencies above (when FIREDRILL_STATIC_AGENT is on).
function(firedrill_static_deps target)
  if(FIREDRILL_STATIC_AGENT)
    set_target_properties(${target} PROPERTIES FIREDRILL_STATIC_DEPS ON)
    # pack-relative-relocs: the PIE's relative relocations as a bitmap (DT_RELR, glibc 2.36)
    # instead of 24 bytes each, about 590 KiB fewer to map; gc-sections: no unused code.
    target_link_options(${target} PRIVATE -static-libstdc++ -static-libgcc
                        -Wl,-z,pack-relative-relocs -Wl,--gc-sections)
  endif()
endfunction()
