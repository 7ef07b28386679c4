# libflclient: a shared and a static library built from the client objects plus a private copy
# of the common core (compiled here with hidden visibility), so that users link -lflclient and
# nothing else of ours. Only the fl_ API (FL_API in fl/client.h, and fl/err.h's functions) is
# exported from the shared library; a version script keeps fl__ internals and the generated
# protobuf code local.
target_compile_options(flclient_obj PRIVATE -fvisibility=hidden)

# Versions (docs/ABI.md). fl/version.h (generated from the project version) is what
# fl_version() reports. The SONAME changes with every incompatible release:
# libflclient.so.<major>, and while the major version is 0, libflclient.so.0.<minor> (0.x minors
# may break the ABI).
if(PROJECT_VERSION_MAJOR EQUAL 0)
  set(FL_CLIENT_SOVERSION 0.${PROJECT_VERSION_MINOR})
else()
  set(FL_CLIENT_SOVERSION ${PROJECT_VERSION_MAJOR})
endif()
# tests/ checks the built library against it (unit.flclient_symbols).
set(FL_CLIENT_SOVERSION ${FL_CLIENT_SOVERSION} PARENT_SCOPE)

add_library(flclient_common_obj OBJECT ${FL_COMMON_SOURCES}
            ${CMAKE_BINARY_DIR}/gen/fl/v1/fleetlearn.pb-c.c)
add_dependencies(flclient_common_obj flproto)
set_source_files_properties(${CMAKE_BINARY_DIR}/gen/fl/v1/fleetlearn.pb-c.c PROPERTIES
  GENERATED TRUE COMPILE_OPTIONS -Wno-error)
target_compile_options(flclient_common_obj PRIVATE -fvisibility=hidden)
target_include_directories(flclient_common_obj PRIVATE
  ${CMAKE_SOURCE_DIR}/common ${CMAKE_SOURCE_DIR}/common/include ${CMAKE_BINARY_DIR}/gen)
target_link_libraries(flclient_common_obj PRIVATE PkgConfig::PROTOBUFC PkgConfig::OPENSSL
  PkgConfig::ZLIB)
# fl_strerror and fl_err_name are part of the client API.
set_source_files_properties(${CMAKE_SOURCE_DIR}/common/err.c PROPERTIES
  COMPILE_OPTIONS -fvisibility=default)

set(FL_CLIENT_DEPS PkgConfig::PROTOBUFC PkgConfig::OPENSSL PkgConfig::ZLIB m)
set(FL_PC_REQUIRES "libprotobuf-c libcrypto zlib") # flclient.pc's Requires.private
if(FL_WITH_CURL)
  list(APPEND FL_CLIENT_DEPS PkgConfig::CURL)
  string(APPEND FL_PC_REQUIRES " libcurl")
endif()
if(FL_WITH_BLAS)
  target_link_libraries(flclient_common_obj PRIVATE PkgConfig::OPENBLAS)
  list(APPEND FL_CLIENT_DEPS PkgConfig::OPENBLAS)
  string(APPEND FL_PC_REQUIRES " openblas")
endif()
list(APPEND FL_CLIENT_DEPS ${FL_CLIENT_MQTT_DEPS}) # client/CMakeLists.txt: FL_WITH_MQTT

add_library(flclient SHARED $<TARGET_OBJECTS:flclient_obj> $<TARGET_OBJECTS:flclient_common_obj>)
target_link_libraries(flclient PRIVATE ${FL_CLIENT_DEPS})
target_include_directories(flclient PUBLIC
  $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/include>
  $<BUILD_INTERFACE:${CMAKE_SOURCE_DIR}/common/include>
  $<BUILD_INTERFACE:${CMAKE_BINARY_DIR}/gen>
  $<INSTALL_INTERFACE:include>)
set_target_properties(flclient PROPERTIES
  VERSION ${PROJECT_VERSION} SOVERSION ${FL_CLIENT_SOVERSION})
target_link_options(flclient PRIVATE
  -Wl,--version-script=${CMAKE_CURRENT_SOURCE_DIR}/flclient.map -Wl,--gc-sections)
if(NOT FL_SANITIZE)
  target_link_options(flclient PRIVATE -Wl,--no-undefined)
endif()
set_property(TARGET flclient APPEND PROPERTY LINK_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/flclient.map)

# In-tree users (tests, benches, fl-sim) may also link flcommon: the objects here are the same
# ones, so the linker takes each from one place only.
add_library(flclient_static STATIC $<TARGET_OBJECTS:flclient_obj>
            $<TARGET_OBJECTS:flclient_common_obj>)
set_target_properties(flclient_static PROPERTIES OUTPUT_NAME flclient)
target_link_libraries(flclient_static PUBLIC ${FL_CLIENT_DEPS})
target_include_directories(flclient_static PUBLIC
  $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/include>
  $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}>
  $<BUILD_INTERFACE:${CMAKE_SOURCE_DIR}/common>
  $<BUILD_INTERFACE:${CMAKE_SOURCE_DIR}/common/include>
  $<BUILD_INTERFACE:${FL_PROTO_OUT}>
  $<INSTALL_INTERFACE:include>)

# transport_http.c: the gateway's own transport when the library has no libcurl (FL_WITH_CURL).
add_executable(fl-gateway examples/gateway.c examples/transport_http.c)
target_link_libraries(fl-gateway PRIVATE flclient)
install(TARGETS fl-gateway RUNTIME DESTINATION bin)

include(GNUInstallDirs)
# The .pc file finds the prefix relative to itself, so that an installed tree can be moved.
file(RELATIVE_PATH FL_PC_TO_PREFIX "/p/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/p")
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}")
  set(FL_PC_TO_PREFIX "${CMAKE_INSTALL_PREFIX}")
endif()
configure_file(${CMAKE_CURRENT_SOURCE_DIR}/flclient.pc.in ${CMAKE_CURRENT_BINARY_DIR}/flclient.pc
               @ONLY)
install(TARGETS flclient flclient_static
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(FILES ${CMAKE_CURRENT_SOURCE_DIR}/include/fl/client.h
              ${CMAKE_SOURCE_DIR}/common/include/fl/err.h
              ${CMAKE_SOURCE_DIR}/common/include/fl/alloc.h
              ${CMAKE_BINARY_DIR}/gen/fl/version.h
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/fl)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/flclient.pc
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
