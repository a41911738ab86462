#include "emu/log.h"

#include <array>
#include <cstdlib>
#include <mutex>
#include <string>

#include <spdlog/sinks/stdout_color_sinks.h>


namespace emu {
namespace {

constexpr std::array<const char*, 6> kNames = {"emu", "rmap", "swap", "fault", "preload", "cli"};

struct Loggers {
  std::array<std::shared_ptr<spdlog::logger>, kNames.size()> by_component;
  Loggers() {
    auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
    for (size_t i = 0; i < kNames.size(); i++) {
      by_component[i] = std::make_shared<spdlog::logger>(kNames[i], sink);
      by_component[i]->set_level(spdlog::level::warn);
      by_component[i]->set_pattern("emu[%n] %l: %v");
    }
  }
};

Loggers& Get() {
  static Loggers* loggers = new Loggers();  // never destroyed: used at exit too
  return *loggers;
}

}  // namespace

spdlog::logger& Log(Component c) {
  static std::once_flag env_once;
  std::call_once(env_once, [] {
    if (const char* spec = std::getenv("EMU_LOG"); spec && !SetLogLevels(spec)) {
      Get().by_component[0]->warn("EMU_LOG={} does not parse; want e.g. fault=debug,swap=info", spec);
    }
  });
  return *Get().by_component[static_cast<size_t>(c)];
}

bool SetLogLevels(std::string_view spec) {
  auto& loggers = Get().by_component;
  std::array<int, kNames.size()> levels;
  levels.fill(-1);
  while (!spec.empty()) {
    size_t comma = spec.find(',');
    std::string_view item = spec.substr(0, comma);
    spec = comma == std::string_view::npos ? std::string_view() : spec.substr(comma + 1);
    if (item.empty()) continue;
    size_t eq = item.find('=');
    std::string_view comp = eq == std::string_view::npos ? std::string_view() : item.substr(0, eq);
    std::string_view level_name = eq == std::string_view::npos ? item : item.substr(eq + 1);
    auto level = spdlog::level::from_str(std::string(level_name));
    if (level == spdlog::level::off && level_name != "off") return false;
    bool matched = false;
    for (size_t i = 0; i < kNames.size(); i++) {
      if (comp.empty() || comp == kNames[i]) {
        levels[i] = level;
        matched = true;
      }
    }
    if (!matched) return false;
  }
  for (size_t i = 0; i < kNames.size(); i++) {
    if (levels[i] >= 0) loggers[i]->set_level(static_cast<spdlog::level::level_enum>(levels[i]));
  }
  return true;
}

}  // namespace emu
