# Install rules and the Debian package (CPack, DEB generator).
#
#   make package   ->  build/meridian_<version>_amd64.deb
#
# The package holds /usr/bin/meridian, the systemd unit, a default config marked as a conffile
# (/etc/meridian/meridian.yaml) and the operator docs. Its Depends line is computed from the
# binary's shared libraries by dpkg-shlibdeps (package dpkg-dev, installed by scripts/setup.sh).
# Files live in deploy/debian/.

set(MERIDIAN_DEBIAN_DIR ${CMAKE_SOURCE_DIR}/deploy/debian)

install(TARGETS meridian RUNTIME DESTINATION bin COMPONENT meridian)
# Absolute destinations: the package owns these paths whatever the install prefix.
install(FILES ${MERIDIAN_DEBIAN_DIR}/meridian.service
  DESTINATION /lib/systemd/system COMPONENT meridian)
install(FILES ${MERIDIAN_DEBIAN_DIR}/meridian.yaml
  DESTINATION /etc/meridian COMPONENT meridian)
install(FILES ${CMAKE_SOURCE_DIR}/docs/operations.md ${CMAKE_SOURCE_DIR}/docs/configuration.md
  DESTINATION share/doc/meridian COMPONENT meridian)

# `cpack` and `make package` only package: building is `cmake --build --target meridian`'s job
# (the Makefile's package target does it first), so packaging never builds tests and benches.
set(CMAKE_SKIP_INSTALL_ALL_DEPENDENCY ON)

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME meridian)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_VENDOR meridian)
set(CPACK_PACKAGE_CONTACT "meridian maintainers <meridian@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "multi-region API gateway node")
set(CPACK_PACKAGE_DESCRIPTION
  "meridian proxies HTTP traffic and shares rate-limit counters, circuit-breaker state and \
configuration between regions through a gossip layer persisted in RocksDB.")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_INSTALL_CMAKE_PROJECTS "${CMAKE_BINARY_DIR};meridian;meridian;/")

set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)   # meridian_<version>_amd64.deb
set(CPACK_DEBIAN_PACKAGE_ARCHITECTURE amd64)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# postinst creates the system user with adduser; systemd runs the unit.
set(CPACK_DEBIAN_PACKAGE_DEPENDS "adduser")
# tzdata: month quotas in an IANA time zone read /usr/share/zoneinfo.
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "systemd, tzdata")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
  ${MERIDIAN_DEBIAN_DIR}/conffiles
  ${MERIDIAN_DEBIAN_DIR}/postinst
  ${MERIDIAN_DEBIAN_DIR}/prerm
  ${MERIDIAN_DEBIAN_DIR}/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)

include(CPack)
