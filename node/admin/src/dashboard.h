#pragma once
// The dashboard's page, script and style sheet (dashboard.cc), served by the admin API at /ui.

#include <string_view>

namespace meridian::node {

std::string_view dashboard_html();
std::string_view dashboard_js();
std::string_view dashboard_css();

}  // namespace meridian::node
