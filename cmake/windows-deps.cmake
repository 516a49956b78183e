# Dependencies of the Windows agent, under the target names the Linux build gets from Debian's
# CMake packages, so common/ and agent/ link the same names on both.
#   TOCSIN_WIN_PREFIX:  OpenSSL and yaml-cpp built from Debian sources (static)
#   TOCSIN_WIN_INCLUDE: the header-only libraries (Boost, msgpack, nlohmann, CLI11, spdlog, fmt)
if(NOT TOCSIN_WIN_PREFIX OR NOT TOCSIN_WIN_INCLUDE)
  message(FATAL_ERROR "set TOCSIN_WIN_PREFIX and TOCSIN_WIN_INCLUDE (see scripts/build-windows)")
endif()

set(CMAKE_FIND_LIBRARY_SUFFIXES .a)
add_compile_definitions(_WIN32_WINNT=0x0A00 WIN32_LEAN_AND_MEAN NOMINMAX)
# One self-contained .exe: no libstdc++/libgcc/winpthread DLLs beside it.
add_link_options(-static -static-libgcc -static-libstdc++)

set(THREADS_PREFER_PTHREAD_FLAG ON)
find_package(Threads REQUIRED)

set(OPENSSL_ROOT_DIR ${TOCSIN_WIN_PREFIX})
set(OPENSSL_USE_STATIC_LIBS TRUE)
find_package(OpenSSL 3 REQUIRED)
# Static libcrypto needs the Windows libraries it calls.
set_property(TARGET OpenSSL::Crypto APPEND PROPERTY INTERFACE_LINK_LIBRARIES ws2_32 crypt32 bcrypt)

find_package(yaml-cpp REQUIRED PATHS ${TOCSIN_WIN_PREFIX} NO_DEFAULT_PATH)

add_library(tocsin_win_headers INTERFACE)
target_include_directories(tocsin_win_headers SYSTEM INTERFACE ${TOCSIN_WIN_INCLUDE})

add_library(Boost::headers INTERFACE IMPORTED)
target_link_libraries(Boost::headers INTERFACE tocsin_win_headers ws2_32 mswsock)
add_library(msgpackc-cxx INTERFACE IMPORTED)
target_link_libraries(msgpackc-cxx INTERFACE tocsin_win_headers)
add_library(nlohmann_json::nlohmann_json INTERFACE IMPORTED)
target_link_libraries(nlohmann_json::nlohmann_json INTERFACE tocsin_win_headers)
add_library(CLI11::CLI11 INTERFACE IMPORTED)
target_link_libraries(CLI11::CLI11 INTERFACE tocsin_win_headers)
# spdlog and fmt in header-only mode: Debian's spdlog is configured for an external fmt.
add_library(spdlog::spdlog INTERFACE IMPORTED)
target_link_libraries(spdlog::spdlog INTERFACE tocsin_win_headers)
target_compile_definitions(spdlog::spdlog INTERFACE SPDLOG_FMT_EXTERNAL FMT_HEADER_ONLY)

# The names common/ and agent/ link (cmake/linux-deps.cmake picks static or shared on Linux).
set(TOCSIN_SPDLOG spdlog::spdlog)
set(TOCSIN_OPENSSL OpenSSL::SSL)
set(TOCSIN_YAML yaml-cpp)
function(tocsin_static_deps target)
endfunction()
