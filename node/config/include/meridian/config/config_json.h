#pragma once
// The effective config as JSON, for GET /config on the admin API.
//
// The JSON has the same shape and key names as the YAML file (SPEC.md), so an object taken from
// GET /config can be sent back with PUT /config/<kind>/<name>. Values are written in their
// canonical form: durations as "250ms"/"2s"/"1m", addresses as "host:port", enums by name.
// Nothing here is secret: only paths to key files are included, never their contents.

#include <nlohmann/json.hpp>
#include <string>

#include "meridian/config/config.h"

namespace meridian::node {

// Returns {"routes":[...],"upstreams":[...],"consumers":[...],"jwt":[...]}; the caller adds
// "version". Empty optional settings are omitted; settings with defaults are written out.
nlohmann::json config_to_json(const config& c);

// Formats d in the largest unit that represents it exactly: "1d", "2h", "1m", "90s", "250ms".
// Zero is "0s"; a negative duration keeps its sign ("-5s").
std::string format_duration(duration d);

// Returns the YAML name of a balance policy ("round_robin", ...).
std::string_view balance_name(balance_policy policy);

}  // namespace meridian::node
