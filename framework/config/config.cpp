#include "framework/config/config.h"

#include "framework/common/atomic_file.h"
#include "framework/config/settings.h"
#include "framework/system/version.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace qforge::config {
namespace {

std::vector<std::string> split_key_path(const std::string& path, const std::string& option) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (true) {
    std::size_t dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (part.empty()) throw ConfigError(fmt::format("{}: the key path '{}' has an empty part", option, path));
    parts.push_back(part);
    if (dot == std::string::npos) return parts;
    start = dot + 1;
  }
}

// A copy of the mapping `node` whose values are the same nodes (a fresh node of its own when `node` is not a
// mapping). An anchored node is one node wherever an alias names it: assigning through it would change every alias.
YAML::Node own_mapping(const YAML::Node& node) {
  YAML::Node copy(YAML::NodeType::Map);
  if (node.IsDefined() && node.IsMap())
    for (auto it = node.begin(); it != node.end(); ++it) copy.force_insert(it->first, it->second);
  return copy;
}

// `node` with parts[index..] set to `value`: every mapping on the path is copied, so that an override never writes
// through an alias into the anchor or its other aliases.
YAML::Node with_key_path(const YAML::Node& node, const std::vector<std::string>& parts, std::size_t index,
                         const YAML::Node& value) {
  YAML::Node copy = own_mapping(node);
  const std::string& key = parts[index];
  const YAML::Node existing = static_cast<const YAML::Node&>(copy)[key];  // const: a missing key adds nothing
  YAML::Node child = index + 1 == parts.size() ? value : with_key_path(existing, parts, index + 1, value);
  copy.remove(key);
  copy.force_insert(key, child);
  return copy;
}

// The mappings and lists already seen, by identity (an alias is the anchored node itself): keyed by position in
// the file, where two different nodes rarely start, then compared with YAML::Node::is.
class NodeSet {
 public:
  bool contains(const YAML::Node& node) const {
    auto found = nodes_.find(node.Mark().pos);
    if (found == nodes_.end()) return false;
    for (const YAML::Node& seen : found->second)
      if (seen.is(node)) return true;
    return false;
  }
  void insert(const YAML::Node& node) { nodes_[node.Mark().pos].push_back(node); }
  void erase(const YAML::Node& node) {
    std::vector<YAML::Node>& same_place = nodes_[node.Mark().pos];
    for (auto it = same_place.begin(); it != same_place.end(); ++it)
      if (it->is(node)) {
        same_place.erase(it);
        return;
      }
  }

 private:
  std::map<int, std::vector<YAML::Node>> nodes_;
};

// yaml-cpp keeps every pair of a mapping and node[key] finds the first: a key written twice would silently take
// its first value. Throws naming the file, the key path and both lines. Each node is checked once however many
// aliases name it (nested aliases would otherwise cost exponential time), and an alias inside the node it names
// (a structure that contains itself, which no config can mean) is an error naming its line.
void check_no_duplicate_keys(const YAML::Node& node, const std::string& file, const std::string& prefix, NodeSet& open,
                             NodeSet& checked) {
  if (!node.IsMap() && !node.IsSequence()) return;
  if (open.contains(node))
    throw ConfigError(
        fmt::format("{}:{}: '{}' is an alias of a node that contains it; a config must not contain itself", file,
                    node.Mark().line + 1, prefix.substr(0, prefix.size() - 1)));
  if (checked.contains(node)) return;
  open.insert(node);
  if (node.IsSequence())
    for (std::size_t i = 0; i < node.size(); ++i)
      check_no_duplicate_keys(node[i], file, fmt::format("{}[{}].", prefix.substr(0, prefix.size() - 1), i), open,
                              checked);
  std::map<std::string, int> lines;
  if (node.IsMap())
    for (auto it = node.begin(); it != node.end(); ++it) {
      const std::string key = it->first.IsScalar() ? it->first.Scalar() : std::string("?");
      const int line = it->first.Mark().line + 1;
      if (auto [first, inserted] = lines.emplace(key, line); !inserted)
        throw ConfigError(fmt::format("{}:{}: duplicate key '{}' (first at line {}); write each key once", file, line,
                                      prefix + key, first->second));
      check_no_duplicate_keys(it->second, file, prefix + key + ".", open, checked);
    }
  open.erase(node);
  checked.insert(node);
}

YAML::Node parse_file(const std::string& file) {
  try {
    check_input_file(file, "a YAML config file");
  } catch (const Error& e) {
    throw ConfigError(e.what());
  }
  std::ifstream in(file);
  if (!in) throw ConfigError(fmt::format("{}: cannot open the config file ({})", file, std::strerror(errno)));
  try {
    YAML::Node tree = YAML::Load(in);
    if (tree.IsNull()) return YAML::Node(YAML::NodeType::Map);
    NodeSet open, checked;
    check_no_duplicate_keys(tree, file, "", open, checked);
    if (!tree.IsMap())
      throw ConfigError(fmt::format("{}:{}: the config file must be a mapping of keys at the top level", file,
                                    tree.Mark().line + 1));
    return tree;
  } catch (const YAML::Exception& e) {
    const std::string where = e.mark.is_null() ? file : fmt::format("{}:{}", file, e.mark.line + 1);
    throw ConfigError(fmt::format("{}: YAML syntax error: {}", where, e.msg));
  }
}

}  // namespace

YAML::Node load_tree(const std::string& file, const std::vector<std::string>& overrides, Origins& origins) {
  YAML::Node tree = file.empty() ? YAML::Node(YAML::NodeType::Map) : parse_file(file);
  for (const std::string& assignment : overrides) {
    const std::string option = "--set " + assignment;
    const std::size_t equals = assignment.find('=');
    if (equals == std::string::npos)
      throw ConfigError(fmt::format("{}: expected KEY.PATH=VALUE", option));
    const std::string path = assignment.substr(0, equals);
    YAML::Node value;
    try {
      value = YAML::Load(assignment.substr(equals + 1));
    } catch (const YAML::Exception& e) {
      throw ConfigError(fmt::format("{}: the value is not valid YAML: {}", option, e.msg));
    }
    tree.reset(with_key_path(tree, split_key_path(path, option), 0, value));  // reset: rebind, never write through
    origins[path] = option;
  }
  return tree;
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> parts;
  std::stringstream in(text);
  for (std::string part; std::getline(in, part, ',');) {
    const auto first = part.find_first_not_of(' '), last = part.find_last_not_of(' ');
    if (first != std::string::npos) parts.push_back(part.substr(first, last - first + 1));
  }
  return parts;
}

std::string Reader::where(const std::string& key_path, const YAML::Node& node) const {
  for (const auto& [path, option] : origins_) {
    const bool same_or_inside = path == key_path || path.rfind(key_path + ".", 0) == 0;
    if (same_or_inside) return option;
  }
  const std::string file = file_.empty() ? "(defaults)" : file_;
  if (!node.IsDefined() || node.Mark().is_null()) return file;
  return fmt::format("{}:{}", file, node.Mark().line + 1);
}

void Reader::finish() const {
  if (!node_.IsMap()) return;
  for (auto it = node_.begin(); it != node_.end(); ++it) {
    const std::string key = it->first.Scalar();
    if (known_.count(key)) continue;
    const std::string path = prefix_ + key;
    throw ConfigError(fmt::format("{}: unknown key '{}' (expected one of: {})", where(path, it->first), path,
                                  fmt::join(known_, ", ")));
  }
}

void Reader::type_error(const std::string& path, const YAML::Node& node, const char* expected) const {
  throw ConfigError(fmt::format("{}: key '{}' must be {}, got '{}'", where(path, node), path, expected,
                                describe(node)));
}

std::string Reader::describe(const YAML::Node& node) {
  if (node.IsScalar()) return node.Scalar();
  if (node.IsNull()) return "nothing";
  if (node.IsSequence()) return "a list";
  if (node.IsMap()) return "a mapping";
  return "?";
}

}  // namespace qforge::config

namespace qforge::config {

void save_resolved(const std::string& yaml, const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / kResolvedConfigName).string();
  write_file_atomically(path, fmt::format("# resolved config, written by qforge {}\n{}", version(), yaml));
}

}  // namespace qforge::config
