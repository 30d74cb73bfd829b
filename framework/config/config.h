// Typed configuration from YAML. A config struct lists its keys once, in a visit() template:
//
//   struct ParallelSettings {
//     int tp = 1;
//     template <class V> void visit(V& v) { v("tp", tp, at_least(1)); }
//   };
//
// config::load() reads a file plus `--set a.b=value` overrides into such a struct; an unknown key, a wrong
// type, a failed check or a missing required key is a ConfigError naming the file, the key path and the line
// (or the --set option it came from). config::to_yaml() writes the resolved struct back.
#pragma once

#include "framework/common/error.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <map>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

namespace qforge::config {

class ConfigError : public UsageError {
 public:
  using UsageError::UsageError;
};

// Where each overridden key path came from: "parallel.tp" -> "--set parallel.tp=2".
using Origins = std::map<std::string, std::string>;

// Parses the YAML file (an empty name means no file: every key keeps its default) and applies "a.b.c=value"
// overrides, each value read as YAML. Returns the tree and fills `origins`.
YAML::Node load_tree(const std::string& file, const std::vector<std::string>& overrides, Origins& origins);

// ---- checks ------------------------------------------------------------------------------------------------
// A check returns an empty string when the value is acceptable, else what was expected.

struct NoCheck {
  template <class T>
  std::string operator()(const T&) const { return {}; }
};

inline auto at_least(long long minimum) {
  return [minimum](const auto& value) {
    return value >= minimum ? std::string() : fmt::format("a value >= {}", minimum);
  };
}

inline auto one_of(std::vector<std::string> choices) {
  return [choices = std::move(choices)](const std::string& value) {
    for (const auto& c : choices)
      if (c == value) return std::string();
    return fmt::format("one of: {}", fmt::join(choices, ", "));
  };
}

// The items of a comma-separated value ("piqa, arc_easy" -> piqa, arc_easy): spaces around items and empty items
// dropped.
std::vector<std::string> split_list(const std::string& text);

// ---- reading -------------------------------------------------------------------------------------------------

template <class T, class = void>
struct is_section : std::false_type {};
template <class T>
struct is_section<T, std::void_t<decltype(std::declval<T&>().template visit<int>(std::declval<int&>()))>>
    : std::true_type {};

class Reader {
 public:
  Reader(YAML::Node node, std::string prefix, std::string file, const Origins& origins)
      : node_(std::move(node)), prefix_(std::move(prefix)), file_(std::move(file)), origins_(origins) {}

  template <class T, class Check = NoCheck>
  void operator()(const char* key, T& value, Check check = {}) {
    read(key, value, check, false);
  }
  template <class T, class Check = NoCheck>
  void required(const char* key, T& value, Check check = {}) {
    read(key, value, check, true);
  }

  // Every key of this mapping that visit() did not name is an error.
  void finish() const;

  // "file.yaml:12" or "--set a.b=c", for messages about `key_path` whose node is `node`.
  std::string where(const std::string& key_path, const YAML::Node& node) const;

 private:
  template <class T, class Check>
  void read(const char* key, T& value, Check& check, bool required) {
    known_.insert(key);
    const std::string path = prefix_ + key;
    YAML::Node child = node_.IsMap() ? YAML::Node(node_[key]) : YAML::Node();
    if (!child.IsDefined()) {
      if (required) throw ConfigError(fmt::format("{}: missing required key '{}'", where(path, node_), path));
      return;
    }
    parse(path, child, value);
    if (std::string expected = check(value); !expected.empty())
      throw ConfigError(fmt::format("{}: key '{}' must be {}, got '{}'", where(path, child), path, expected,
                                    describe(child)));
  }

  template <class T>
  void parse(const std::string& path, const YAML::Node& node, T& value) {
    if constexpr (is_section<T>::value) {
      if (!node.IsMap() && !node.IsNull()) type_error(path, node, "a mapping of keys");
      Reader nested(node, path + ".", file_, origins_);
      value.visit(nested);
      nested.finish();
    } else if constexpr (std::is_same_v<T, std::string>) {
      if (!node.IsScalar() && !node.IsNull()) type_error(path, node, "a string");
      value = node.IsNull() ? std::string() : node.Scalar();  // "key:" with no value: the empty string
    } else if constexpr (std::is_same_v<T, bool>) {
      if (!node.IsScalar() || !YAML::convert<bool>::decode(node, value)) type_error(path, node, "true or false");
    } else if constexpr (std::is_integral_v<T>) {
      if (!node.IsScalar() || !YAML::convert<T>::decode(node, value)) type_error(path, node, "an integer");
    } else if constexpr (std::is_floating_point_v<T>) {
      if (!node.IsScalar() || !YAML::convert<T>::decode(node, value)) type_error(path, node, "a number");
    } else {  // std::vector<E>
      if (!node.IsSequence()) type_error(path, node, "a list");
      value.clear();
      for (std::size_t i = 0; i < node.size(); ++i) {
        typename T::value_type element{};
        parse(fmt::format("{}[{}]", path, i), node[i], element);
        value.push_back(std::move(element));
      }
    }
  }

  [[noreturn]] void type_error(const std::string& path, const YAML::Node& node, const char* expected) const;
  static std::string describe(const YAML::Node& node);

  YAML::Node node_;
  std::string prefix_;
  std::string file_;
  const Origins& origins_;
  std::set<std::string> known_;
};

template <class Root>
Root load(const std::string& file, const std::vector<std::string>& overrides) {
  Origins origins;
  YAML::Node tree = load_tree(file, overrides, origins);
  Root root;
  Reader reader(tree, "", file, origins);
  root.visit(reader);
  reader.finish();
  return root;
}

// ---- writing -------------------------------------------------------------------------------------------------

class Writer {
 public:
  explicit Writer(YAML::Emitter& out) : out_(out) {}

  template <class T, class Check = NoCheck>
  void operator()(const char* key, const T& value, Check = {}) {
    out_ << YAML::Key << key << YAML::Value;
    emit(value);
  }
  template <class T, class Check = NoCheck>
  void required(const char* key, const T& value, Check check = {}) {
    (*this)(key, value, check);
  }

 private:
  template <class T>
  void emit(const T& value) {
    if constexpr (is_section<T>::value) {
      out_ << YAML::BeginMap;
      const_cast<T&>(value).visit(*this);
      out_ << YAML::EndMap;
    } else if constexpr (std::is_same_v<T, std::string> || std::is_arithmetic_v<T>) {
      out_ << value;
    } else {
      out_ << YAML::Flow << YAML::BeginSeq;
      for (const auto& element : value) emit(element);
      out_ << YAML::EndSeq;
    }
  }

  YAML::Emitter& out_;
};

template <class Root>
std::string to_yaml(const Root& root) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  Writer writer(out);
  const_cast<Root&>(root).visit(writer);
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace qforge::config
