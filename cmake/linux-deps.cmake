# Linux dependencies under the names common/, agent/ and collector/ link.
#
# tocsin-agent links Debian's shared OpenSSL, yaml-cpp and c-ares by default: the agent parses
# untrusted input (TLS, DNS, HTTP, YAML), and a security update to those libraries must reach
# it through apt, without a rebuild of ours. TOCSIN_STATIC_AGENT (off) links the static archives
# Debian ships instead, a static libstdc++/libgcc, and compiles spdlog and fmt in
# (common/spdlog_builtin.cpp): smaller private memory on hosts where nothing else shares those
# libraries (docs/BENCHMARKS.md, footprint), at the price of shipping every OpenSSL fix
# ourselves. The collector, the CLI and the test programs always use the shared libraries. A
# target opts in with tocsin_static_deps(); the link interfaces below pick static or shared per
# target through its TOCSIN_STATIC_DEPS property.
option(TOCSIN_STATIC_AGENT
  "Link tocsin-agent against static OpenSSL, yaml-cpp, c-ares and libstdc++ (security fixes then need a rebuild)" OFF)

if(TOCSIN_STATIC_AGENT)
  set(_missing "")
  foreach(_lib ssl crypto yaml-cpp cares)
    string(MAKE_C_IDENTIFIER "TOCSIN_STATIC_${_lib}" _var)
    find_library(${_var} NAMES lib${_lib}.a)
    if(NOT ${_var})
      list(APPEND _missing lib${_lib}.a)
    endif()
  endforeach()
  if(_missing)
    message(FATAL_ERROR "TOCSIN_STATIC_AGENT needs ${_missing} (Debian: libssl-dev, "
                        "libyaml-cpp-dev, libc-ares-dev); or configure with -DTOCSIN_STATIC_AGENT=OFF")
  endif()
  add_library(tocsin_static_crypto STATIC IMPORTED)
  set_target_properties(tocsin_static_crypto PROPERTIES
    IMPORTED_LOCATION ${TOCSIN_STATIC_crypto}
    INTERFACE_INCLUDE_DIRECTORIES "${OPENSSL_INCLUDE_DIR}"
    INTERFACE_LINK_LIBRARIES "Threads::Threads;${CMAKE_DL_LIBS}")
  add_library(tocsin_static_ssl STATIC IMPORTED)
  set_target_properties(tocsin_static_ssl PROPERTIES
    IMPORTED_LOCATION ${TOCSIN_STATIC_ssl}
    INTERFACE_LINK_LIBRARIES tocsin_static_crypto)
  add_library(tocsin_static_yaml STATIC IMPORTED)
  set_target_properties(tocsin_static_yaml PROPERTIES
    IMPORTED_LOCATION ${TOCSIN_STATIC_yaml_cpp}
    INTERFACE_INCLUDE_DIRECTORIES "$<TARGET_PROPERTY:yaml-cpp,INTERFACE_INCLUDE_DIRECTORIES>")
  add_library(tocsin_static_cares STATIC IMPORTED)
  set_target_properties(tocsin_static_cares PROPERTIES
    IMPORTED_LOCATION ${TOCSIN_STATIC_cares}
    INTERFACE_INCLUDE_DIRECTORIES "${CARES_INCLUDE_DIRS}")
  # With sections per function, the static agent's link drops what nothing calls.
  add_compile_options(-ffunction-sections -fdata-sections)
  set(_pick "$<BOOL:$<TARGET_PROPERTY:TOCSIN_STATIC_DEPS>>")
  add_library(tocsin_spdlog_builtin STATIC ${PROJECT_SOURCE_DIR}/common/spdlog_builtin.cpp)
  # PUBLIC: the agent's own main.cpp must see spdlog as a compiled library too, or it would
  # get a header-only spdlog with a second registry (tests/integration/test_probes_web.cpp).
  target_compile_definitions(tocsin_spdlog_builtin PUBLIC
    $<TARGET_PROPERTY:spdlog::spdlog,INTERFACE_COMPILE_DEFINITIONS>)
  target_include_directories(tocsin_spdlog_builtin PUBLIC
    $<TARGET_PROPERTY:spdlog::spdlog,INTERFACE_INCLUDE_DIRECTORIES>)
  target_link_libraries(tocsin_spdlog_builtin INTERFACE Threads::Threads)
  set(TOCSIN_OPENSSL "$<IF:${_pick},tocsin_static_ssl,OpenSSL::SSL>")
  set(TOCSIN_YAML "$<IF:${_pick},tocsin_static_yaml,yaml-cpp>")
  set(TOCSIN_CARES "$<IF:${_pick},tocsin_static_cares,PkgConfig::CARES>")
  set(TOCSIN_SPDLOG "$<IF:${_pick},tocsin_spdlog_builtin,spdlog::spdlog>")
else()
  set(TOCSIN_OPENSSL OpenSSL::SSL)
  set(TOCSIN_YAML yaml-cpp)
  set(TOCSIN_CARES PkgConfig::CARES)
  set(TOCSIN_SPDLOG spdlog::spdlog)
endif()

# Marks an executable to link the static dependencies above (when TOCSIN_STATIC_AGENT is on).
function(tocsin_static_deps target)
  if(TOCSIN_STATIC_AGENT)
    set_target_properties(${target} PROPERTIES TOCSIN_STATIC_DEPS ON)
    # pack-relative-relocs: the PIE's relative relocations as a bitmap (DT_RELR, glibc 2.36)
    # instead of 24 bytes each, about 590 KiB fewer to map; gc-sections: no unused code.
    target_link_options(${target} PRIVATE -static-libstdc++ -static-libgcc
                        -Wl,-z,pack-relative-relocs -Wl,--gc-sections)
  endif()
endfunction()
