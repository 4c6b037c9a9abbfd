// The Jinja subset of chat templates: the source is cut into text, {{ expression }} and {% statement %} segments
// (comments dropped, whitespace control applied), the segments are parsed into a tree of statements over
// expression trees, and rendering walks the tree with a stack of scopes. Values are JSON values in insertion order
// (Python's dict order), plus "undefined" (a discarded JSON value), which renders as nothing, is false, and has
// undefined attributes, as in Jinja's default mode. Strings print as themselves, numbers, booleans and None as
// Python prints them, and tojson writes Python's json.dumps layout (", " and ": "), so prompts come out byte for
// byte as transformers' apply_chat_template makes them.
#include "ds/serve/chat_template.h"

#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <sstream>

#include "ds/core/error.h"
#include "ds/core/json_input.h"

namespace ds::serve {

using Value = nlohmann::ordered_json;

namespace jinja {

constexpr size_t kMaxTemplateBytes = size_t(1) << 20;
constexpr size_t kMaxOutputBytes = size_t(8) << 20;
constexpr int64_t kMaxIterations = 1'000'000;
constexpr int kMaxDepth = 200;  // nesting of statements and of expressions

Value undefined() { return Value(Value::value_t::discarded); }
bool is_undefined(const Value& v) { return v.is_discarded(); }

// ------------------------------------------------------------------------------------------------ lexing

enum class Tok { name, number, string, op };
struct Token {
  Tok kind;
  std::string text;  // name, operator, or the string literal's value
  Value number;
  size_t offset;
};

struct Segment {
  enum class Kind { text, expr, stmt } kind;
  std::string text;
  std::vector<Token> tokens;
  size_t offset;
};

class Lexer {
 public:
  Lexer(std::string_view src, const std::string& origin) : src_(src), origin_(origin) {}

  [[noreturn]] void fail(size_t offset, std::string_view what) const {
    int line = 1, col = 1;
    for (size_t i = 0; i < offset && i < src_.size(); ++i) {
      if (src_[i] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    DS_THROW(ConfigError, "[chat template] {}, line {}, column {}: {}", origin_, line, col, what);
  }

  std::vector<Segment> segments() {
    std::vector<Segment> out;
    size_t i = 0;
    bool strip_next = false, trim_newline = false;
    while (i <= src_.size()) {
      size_t open = src_.find('{', i);
      while (open != std::string_view::npos && open + 1 < src_.size() && src_[open + 1] != '{' &&
             src_[open + 1] != '%' && src_[open + 1] != '#') {
        open = src_.find('{', open + 1);
      }
      if (open != std::string_view::npos && open + 1 >= src_.size()) open = std::string_view::npos;
      std::string text(src_.substr(i, open == std::string_view::npos ? std::string_view::npos : open - i));
      if (strip_next) {
        text.erase(0, text.find_first_not_of(" \t\r\n"));
        if (text.find_first_not_of(" \t\r\n") == std::string::npos) text.clear();
      } else if (trim_newline && !text.empty() && text[0] == '\n') {
        text.erase(0, 1);  // trim_blocks
      }
      strip_next = trim_newline = false;
      if (open == std::string_view::npos) {
        if (!text.empty()) out.push_back({Segment::Kind::text, std::move(text), {}, i});
        break;
      }
      const char kind = src_[open + 1];
      size_t p = open + 2;
      const bool minus = p < src_.size() && src_[p] == '-';
      const bool plus = p < src_.size() && src_[p] == '+';
      if (minus || plus) ++p;
      if (minus) {
        const size_t keep = text.find_last_not_of(" \t\r\n");
        text.erase(keep == std::string::npos ? 0 : keep + 1);
      } else if (kind != '{' && !plus) {
        // lstrip_blocks: spaces and tabs between the start of the line and a block or comment tag go.
        size_t k = open;
        while (k > i && (src_[k - 1] == ' ' || src_[k - 1] == '\t')) --k;
        if (k == 0 || src_[k - 1] == '\n') text.erase(text.size() - std::min(text.size(), open - k));
      }
      if (!text.empty()) out.push_back({Segment::Kind::text, std::move(text), {}, i});
      if (kind == '#') {
        const size_t close = src_.find("#}", p);
        if (close == std::string_view::npos) fail(open, "a comment {# is never closed by #}");
        strip_next = close > p && src_[close - 1] == '-';
        trim_newline = !strip_next;
        i = close + 2;
        continue;
      }
      Segment seg{kind == '{' ? Segment::Kind::expr : Segment::Kind::stmt, {}, {}, open};
      const std::string_view closer = kind == '{' ? "}}" : "%}";
      bool minus_close = false;
      i = tokenize(p, closer, seg.tokens, minus_close, open);
      if (seg.tokens.empty()) fail(open, kind == '{' ? "an empty {{ }}" : "an empty {% %}");
      out.push_back(std::move(seg));
      strip_next = minus_close;
      trim_newline = !minus_close && kind == '%';
    }
    return out;
  }

 private:
  // Tokens from p up to the closer; returns the offset after it.
  size_t tokenize(size_t p, std::string_view closer, std::vector<Token>& out, bool& minus_close, size_t open) {
    static const char* kTwo[] = {"==", "!=", "<=", ">=", "//", "**"};
    while (true) {
      while (p < src_.size() && std::isspace(static_cast<unsigned char>(src_[p]))) ++p;
      if (p >= src_.size()) fail(open, fmt::format("this tag is never closed by {}", closer));
      if (src_.compare(p, closer.size(), closer) == 0) return p + closer.size();
      if (src_[p] == '-' && src_.compare(p + 1, closer.size(), closer) == 0) {
        minus_close = true;
        return p + 1 + closer.size();
      }
      const char c = src_[p];
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t e = p;
        while (e < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[e])) || src_[e] == '_')) ++e;
        out.push_back({Tok::name, std::string(src_.substr(p, e - p)), {}, p});
        p = e;
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        size_t e = p;
        while (e < src_.size() && std::isdigit(static_cast<unsigned char>(src_[e]))) ++e;
        bool is_float = false;
        if (e + 1 < src_.size() && src_[e] == '.' && std::isdigit(static_cast<unsigned char>(src_[e + 1]))) {
          is_float = true;
          ++e;
          while (e < src_.size() && std::isdigit(static_cast<unsigned char>(src_[e]))) ++e;
        }
        const std::string digits(src_.substr(p, e - p));
        Value n;
        if (is_float) {
          n = std::strtod(digits.c_str(), nullptr);
        } else {
          errno = 0;
          const long long v = std::strtoll(digits.c_str(), nullptr, 10);
          if (errno != 0) fail(p, "an integer literal out of range");
          n = static_cast<int64_t>(v);
        }
        out.push_back({Tok::number, digits, n, p});
        p = e;
      } else if (c == '\'' || c == '"') {
        std::string s;
        size_t e = p + 1;
        while (e < src_.size() && src_[e] != c) {
          if (src_[e] == '\\' && e + 1 < src_.size()) {
            const char x = src_[++e];
            s += x == 'n' ? '\n' : x == 't' ? '\t' : x == 'r' ? '\r' : x;
          } else {
            s += src_[e];
          }
          ++e;
        }
        if (e >= src_.size()) fail(p, "a string literal is never closed");
        out.push_back({Tok::string, std::move(s), {}, p});
        p = e + 1;
      } else {
        std::string op(1, c);
        for (const char* two : kTwo) {
          if (src_.compare(p, 2, two) == 0) op = two;
        }
        if (std::string_view("+-*/%~<>()[]{},:.|=!").find(c) == std::string_view::npos) {
          fail(p, fmt::format("the character '{}' is not part of the template language", c));
        }
        if (op == "!") fail(p, "'!' alone is not an operator; write 'not' or '!='");
        out.push_back({Tok::op, op, {}, p});
        p += op.size();
      }
    }
  }

  std::string_view src_;
  const std::string& origin_;
};

// ------------------------------------------------------------------------------------------------ trees

struct Expr {
  enum Kind { literal, var, attr, index, slice, call, filter, test, unary, binary, ternary, list, dict } kind;
  Value value;       // literal
  std::string name;  // var, attr, filter, test, unary and binary operator
  std::vector<std::unique_ptr<Expr>> args;  // operands; call: callee then positional arguments
  std::vector<std::pair<std::string, std::unique_ptr<Expr>>> kwargs;
  bool negated = false;  // test: "is not"
  size_t offset = 0;
};
using ExprP = std::unique_ptr<Expr>;

}  // namespace jinja

struct ChatTemplate::Node {
  enum class Kind { sequence, text, output, branch, loop, assign } kind;
  std::string text;                         // text
  std::vector<std::unique_ptr<Node>> body;  // sequence
  jinja::ExprP expr;                        // output, assign's value, loop's iterable
  std::vector<std::pair<jinja::ExprP, std::unique_ptr<Node>>> branches;  // if/elif (else: null condition)
  std::vector<std::string> vars;            // loop variables
  jinja::ExprP filter;                      // loop's "if" condition
  std::unique_ptr<Node> loop_body, loop_else;
  std::string target, attr;                 // assign: name, or namespace name and attribute
  size_t offset = 0;
};

namespace jinja {

using Node = ChatTemplate::Node;
using NodeP = std::unique_ptr<Node>;

// What the interpreter implements, checked when a template is read.
const std::vector<std::string> kFilters = {"trim", "strip", "length", "count", "upper", "lower", "title", "capitalize",
                                           "replace", "first", "last", "default", "d", "tojson", "string", "safe",
                                           "int", "float", "abs", "join", "list", "reverse", "items"};
const std::vector<std::string> kTests = {"defined", "undefined", "none", "string", "number", "integer", "float",
                                         "boolean", "true", "false", "mapping", "sequence", "iterable", "even", "odd",
                                         "divisibleby", "equalto", "eq", "sameas"};
const std::vector<std::string> kFunctions = {"raise_exception", "namespace", "range", "strftime_now"};

bool listed(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

std::string names_of(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

class Parser {
 public:
  Parser(std::vector<Segment> segs, const Lexer& lex) : segs_(std::move(segs)), lex_(lex) {}

  NodeP parse() {
    std::string end;
    NodeP root = block({}, end, 0);
    return root;
  }

 private:
  // Statements up to one of `ends` (its keyword in `which`; an empty `ends` runs to the end of the template).
  NodeP block(const std::vector<std::string>& ends, std::string& which, int depth) {
    if (depth > kMaxDepth) lex_.fail(pos_ < segs_.size() ? segs_[pos_].offset : 0, "statements nest too deeply");
    auto seq = std::make_unique<Node>();
    seq->kind = Node::Kind::sequence;
    while (pos_ < segs_.size()) {
      Segment& seg = segs_[pos_];
      if (seg.kind == Segment::Kind::text) {
        auto n = std::make_unique<Node>();
        n->kind = Node::Kind::text;
        n->text = std::move(seg.text);
        seq->body.push_back(std::move(n));
        ++pos_;
        continue;
      }
      toks_ = &seg.tokens;
      at_ = 0;
      if (seg.kind == Segment::Kind::expr) {
        auto n = std::make_unique<Node>();
        n->kind = Node::Kind::output;
        n->offset = seg.offset;
        n->expr = expression(true, 0);
        done();
        seq->body.push_back(std::move(n));
        ++pos_;
        continue;
      }
      const Token& head = seg.tokens[0];
      if (head.kind != Tok::name) lex_.fail(head.offset, "a statement must start with a keyword such as if or for");
      const std::string kw = head.text;
      if (std::find(ends.begin(), ends.end(), kw) != ends.end()) {
        which = kw;
        return seq;  // the caller reads the rest of this segment
      }
      at_ = 1;
      if (kw == "if") {
        seq->body.push_back(if_statement(seg.offset, depth));
      } else if (kw == "for") {
        seq->body.push_back(for_statement(seg.offset, depth));
      } else if (kw == "set") {
        seq->body.push_back(set_statement(seg.offset));
      } else if (kw == "elif" || kw == "else" || kw == "endif" || kw == "endfor") {
        lex_.fail(head.offset, fmt::format("{{% {} %}} without a matching opening statement", kw));
      } else {
        lex_.fail(head.offset, fmt::format("the statement '{}' is not supported in chat templates here (supported: "
                                           "if, elif, else, for, set)",
                                           kw));
      }
    }
    if (!ends.empty()) {
      lex_.fail(segs_.empty() ? 0 : segs_.back().offset,
                fmt::format("the template ends before {{% {} %}}", ends.back()));
    }
    return seq;
  }

  NodeP if_statement(size_t offset, int depth) {
    auto n = std::make_unique<Node>();
    n->kind = Node::Kind::branch;
    n->offset = offset;
    ExprP cond = expression(true, 0);
    done();
    ++pos_;
    while (true) {
      std::string which;
      NodeP body = block({"elif", "else", "endif"}, which, depth + 1);
      n->branches.emplace_back(std::move(cond), std::move(body));
      toks_ = &segs_[pos_].tokens;
      at_ = 1;
      if (which == "endif") {
        done();
        ++pos_;
        return n;
      }
      if (which == "else") {
        done();
        ++pos_;
        std::string end;
        n->branches.emplace_back(nullptr, block({"endif"}, end, depth + 1));
        toks_ = &segs_[pos_].tokens;
        at_ = 1;
        done();
        ++pos_;
        return n;
      }
      cond = expression(true, 0);  // elif
      done();
      ++pos_;
    }
  }

  NodeP for_statement(size_t offset, int depth) {
    auto n = std::make_unique<Node>();
    n->kind = Node::Kind::loop;
    n->offset = offset;
    n->vars.push_back(name("a loop variable"));
    while (peek_op(",")) {
      ++at_;
      n->vars.push_back(name("a loop variable"));
    }
    if (!peek_name("in")) fail_here("expected 'in' after the loop variables");
    ++at_;
    n->expr = expression(false, 0);
    if (peek_name("if")) {
      ++at_;
      n->filter = expression(false, 0);
    }
    if (peek_name("recursive")) fail_here("recursive loops are not supported");
    done();
    ++pos_;
    std::string which;
    n->loop_body = block({"else", "endfor"}, which, depth + 1);
    toks_ = &segs_[pos_].tokens;
    at_ = 1;
    done();
    ++pos_;
    if (which == "else") {
      std::string end;
      n->loop_else = block({"endfor"}, end, depth + 1);
      toks_ = &segs_[pos_].tokens;
      at_ = 1;
      done();
      ++pos_;
    }
    return n;
  }

  NodeP set_statement(size_t offset) {
    auto n = std::make_unique<Node>();
    n->kind = Node::Kind::assign;
    n->offset = offset;
    n->target = name("a variable name");
    if (peek_op(".")) {
      ++at_;
      n->attr = name("an attribute name");
    }
    if (!peek_op("=")) fail_here("block {% set %} ... {% endset %} is not supported; write {% set x = value %}");
    ++at_;
    n->expr = expression(true, 0);
    done();
    ++pos_;
    return n;
  }

  // ---- expressions
  const Token* peek() const { return at_ < toks_->size() ? &(*toks_)[at_] : nullptr; }
  bool peek_op(std::string_view op) const {
    const Token* t = peek();
    return t && t->kind == Tok::op && t->text == op;
  }
  bool peek_name(std::string_view n) const {
    const Token* t = peek();
    return t && t->kind == Tok::name && t->text == n;
  }
  [[noreturn]] void fail_here(std::string_view what) const {
    const Token* t = peek();
    lex_.fail(t ? t->offset : (toks_->empty() ? 0 : toks_->back().offset), what);
  }
  void done() {
    if (peek()) fail_here(fmt::format("unexpected '{}'", peek()->text));
  }
  std::string name(std::string_view what) {
    const Token* t = peek();
    if (!t || t->kind != Tok::name) fail_here(fmt::format("expected {}", what));
    ++at_;
    return t->text;
  }
  void expect_op(std::string_view op) {
    if (!peek_op(op)) fail_here(fmt::format("expected '{}'", op));
    ++at_;
  }
  ExprP make(Expr::Kind k, size_t offset, std::string nm = {}) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->name = std::move(nm);
    e->offset = offset;
    return e;
  }
  size_t here() const { return peek() ? peek()->offset : 0; }

  ExprP expression(bool ternary, int depth) {
    if (depth > kMaxDepth) fail_here("the expression nests too deeply");
    ExprP e = binary_or(depth + 1);
    if (ternary && peek_name("if")) {
      const size_t off = here();
      ++at_;
      auto t = make(Expr::ternary, off);
      t->args.push_back(binary_or(depth + 1));  // condition
      t->args.push_back(std::move(e));          // then
      if (peek_name("else")) {
        ++at_;
        t->args.push_back(expression(true, depth + 1));
      }
      return t;
    }
    return e;
  }
  ExprP binary(ExprP l, std::string op, ExprP r, size_t off) {
    auto e = make(Expr::binary, off, std::move(op));
    e->args.push_back(std::move(l));
    e->args.push_back(std::move(r));
    return e;
  }
  ExprP binary_or(int d) {
    ExprP e = binary_and(d);
    while (peek_name("or")) {
      const size_t off = here();
      ++at_;
      e = binary(std::move(e), "or", binary_and(d), off);
    }
    return e;
  }
  ExprP binary_and(int d) {
    ExprP e = unary_not(d);
    while (peek_name("and")) {
      const size_t off = here();
      ++at_;
      e = binary(std::move(e), "and", unary_not(d), off);
    }
    return e;
  }
  ExprP unary_not(int d) {
    if (d > kMaxDepth) fail_here("the expression nests too deeply");
    if (peek_name("not")) {
      const size_t off = here();
      ++at_;
      auto e = make(Expr::unary, off, "not");
      e->args.push_back(unary_not(d + 1));
      return e;
    }
    return compare(d);
  }
  ExprP compare(int d) {
    ExprP e = concat(d);
    while (true) {
      const Token* t = peek();
      if (!t) return e;
      std::string op;
      if (t->kind == Tok::op && (t->text == "==" || t->text == "!=" || t->text == "<" || t->text == "<=" ||
                                 t->text == ">" || t->text == ">=")) {
        op = t->text;
        ++at_;
      } else if (t->kind == Tok::name && t->text == "in") {
        op = "in";
        ++at_;
      } else if (t->kind == Tok::name && t->text == "not" && at_ + 1 < toks_->size() &&
                 (*toks_)[at_ + 1].kind == Tok::name && (*toks_)[at_ + 1].text == "in") {
        op = "not in";
        at_ += 2;
      } else {
        return e;
      }
      e = binary(std::move(e), op, concat(d), t->offset);
    }
  }
  ExprP concat(int d) {
    ExprP e = additive(d);
    while (peek_op("~")) {
      const size_t off = here();
      ++at_;
      e = binary(std::move(e), "~", additive(d), off);
    }
    return e;
  }
  ExprP additive(int d) {
    ExprP e = multiplicative(d);
    while (peek_op("+") || peek_op("-")) {
      const Token& t = *peek();
      ++at_;
      e = binary(std::move(e), t.text, multiplicative(d), t.offset);
    }
    return e;
  }
  ExprP multiplicative(int d) {
    ExprP e = unary_sign(d);
    while (peek_op("*") || peek_op("/") || peek_op("//") || peek_op("%")) {
      const Token& t = *peek();
      ++at_;
      e = binary(std::move(e), t.text, unary_sign(d), t.offset);
    }
    return e;
  }
  ExprP unary_sign(int d) {
    if (d > kMaxDepth) fail_here("the expression nests too deeply");
    if (peek_op("-") || peek_op("+")) {
      const Token& t = *peek();
      ++at_;
      auto e = make(Expr::unary, t.offset, t.text);
      e->args.push_back(unary_sign(d + 1));
      return e;
    }
    return filtered(d);
  }
  // Positional and keyword arguments after '(' up to ')'.
  void arguments(Expr& e, int d) {
    expect_op("(");
    while (!peek_op(")")) {
      const Token* t = peek();
      if (t && t->kind == Tok::name && at_ + 1 < toks_->size() && (*toks_)[at_ + 1].kind == Tok::op &&
          (*toks_)[at_ + 1].text == "=") {
        at_ += 2;
        e.kwargs.emplace_back(t->text, expression(true, d + 1));
      } else {
        e.args.push_back(expression(true, d + 1));
      }
      if (!peek_op(",")) break;
      ++at_;
    }
    expect_op(")");
  }
  ExprP filtered(int d) {
    ExprP e = postfix(primary(d), d);
    while (true) {
      if (peek_op("|")) {
        ++at_;
        const size_t off = here();
        auto f = make(Expr::filter, off, name("a filter name"));
        if (!listed(kFilters, f->name)) {
          lex_.fail(off, fmt::format("the filter '{}' is not supported here (supported: {})", f->name,
                                     names_of(kFilters)));
        }
        f->args.push_back(std::move(e));
        if (peek_op("(")) arguments(*f, d);
        e = postfix(std::move(f), d);
      } else if (peek_name("is")) {
        const size_t off = here();
        ++at_;
        auto t = make(Expr::test, off);
        if (peek_name("not")) {
          ++at_;
          t->negated = true;
        }
        const size_t name_at = here();
        t->name = name("a test name such as defined or none");
        if (!listed(kTests, t->name)) {
          lex_.fail(name_at, fmt::format("the test '{}' is not supported here (supported: {})", t->name,
                                         names_of(kTests)));
        }
        t->args.push_back(std::move(e));
        if (peek_op("(")) {
          arguments(*t, d);
        } else if (peek() && (peek()->kind == Tok::string || peek()->kind == Tok::number)) {
          t->args.push_back(primary(d));  // "is divisibleby 3", "is equalto 'x'"
        }
        e = std::move(t);
      } else {
        return e;
      }
    }
  }
  ExprP postfix(ExprP e, int d) {
    while (true) {
      if (peek_op(".")) {
        ++at_;
        auto a = make(Expr::attr, here(), name("an attribute name"));
        a->args.push_back(std::move(e));
        e = std::move(a);
      } else if (peek_op("[")) {
        const size_t off = here();
        ++at_;
        ExprP lo, hi;
        if (!peek_op(":")) lo = expression(true, d + 1);
        if (peek_op(":")) {
          ++at_;
          if (!peek_op("]")) hi = expression(true, d + 1);
          auto s = make(Expr::slice, off);
          s->args.push_back(std::move(e));
          s->args.push_back(std::move(lo));
          s->args.push_back(std::move(hi));
          e = std::move(s);
        } else {
          if (!lo) fail_here("an empty subscript []");
          auto ix = make(Expr::index, off);
          ix->args.push_back(std::move(e));
          ix->args.push_back(std::move(lo));
          e = std::move(ix);
        }
        expect_op("]");
      } else if (peek_op("(")) {
        if (e->kind == Expr::var && !listed(kFunctions, e->name)) {
          lex_.fail(e->offset, fmt::format("the function '{}' is not available here (available: {})", e->name,
                                           names_of(kFunctions)));
        }
        auto c = make(Expr::call, here());
        c->args.push_back(std::move(e));
        arguments(*c, d);
        e = std::move(c);
      } else {
        return e;
      }
    }
  }
  ExprP primary(int d) {
    if (d > kMaxDepth) fail_here("the expression nests too deeply");
    const Token* t = peek();
    if (!t) fail_here("expected a value");
    ++at_;
    if (t->kind == Tok::number) {
      auto e = make(Expr::literal, t->offset);
      e->value = t->number;
      return e;
    }
    if (t->kind == Tok::string) {
      auto e = make(Expr::literal, t->offset);
      std::string s = t->text;
      while (peek() && peek()->kind == Tok::string) s += (*toks_)[at_++].text;  // adjacent literals join
      e->value = s;
      return e;
    }
    if (t->kind == Tok::name) {
      static const std::map<std::string, Value> kConstants = {
          {"true", true}, {"True", true}, {"false", false}, {"False", false}, {"none", nullptr}, {"None", nullptr}};
      if (auto it = kConstants.find(t->text); it != kConstants.end()) {
        auto e = make(Expr::literal, t->offset);
        e->value = it->second;
        return e;
      }
      return make(Expr::var, t->offset, t->text);
    }
    if (t->text == "(") {
      ExprP e = expression(true, d + 1);
      if (peek_op(",")) fail_here("tuples are not supported; use a list [a, b]");
      expect_op(")");
      return e;
    }
    if (t->text == "[") {
      auto e = make(Expr::list, t->offset);
      while (!peek_op("]")) {
        e->args.push_back(expression(true, d + 1));
        if (!peek_op(",")) break;
        ++at_;
      }
      expect_op("]");
      return e;
    }
    if (t->text == "{") {
      auto e = make(Expr::dict, t->offset);
      while (!peek_op("}")) {
        e->args.push_back(expression(true, d + 1));
        expect_op(":");
        e->args.push_back(expression(true, d + 1));
        if (!peek_op(",")) break;
        ++at_;
      }
      expect_op("}");
      return e;
    }
    lex_.fail(t->offset, fmt::format("unexpected '{}'", t->text));
  }

  std::vector<Segment> segs_;
  const Lexer& lex_;
  size_t pos_ = 0;
  const std::vector<Token>* toks_ = nullptr;
  size_t at_ = 0;
};

// ------------------------------------------------------------------------------------------------ values

// Where each character (UTF-8 code point, as Python counts them) of s starts, and s.size() at the end.
std::vector<size_t> char_starts(const std::string& s) {
  std::vector<size_t> out;
  for (size_t i = 0; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) out.push_back(i);
  }
  out.push_back(s.size());
  return out;
}

// Elements of a list or object, characters of a string (nlohmann's size() counts a string as one value).
size_t size_of(const Value& v) {
  return v.is_string() ? char_starts(v.get_ref<const std::string&>()).size() - 1 : v.size();
}

// Characters [lo, hi) of s.
std::string chars(const std::string& s, int64_t lo, int64_t hi) {
  const std::vector<size_t> at = char_starts(s);
  return s.substr(at[static_cast<size_t>(lo)], at[static_cast<size_t>(hi)] - at[static_cast<size_t>(lo)]);
}

bool truthy(const Value& v) {
  if (is_undefined(v) || v.is_null()) return false;
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number_integer()) return v.get<int64_t>() != 0;
  if (v.is_number()) return v.get<double>() != 0.0;
  if (v.is_string() || v.is_array() || v.is_object()) return size_of(v) != 0;
  return false;
}

std::string python_float(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  if (x == std::floor(x) && std::abs(x) < 1e16) return fmt::format("{:.1f}", x);
  return fmt::format("{}", x);
}

std::string python_repr(const Value& v);

std::string python_str(const Value& v) {
  if (is_undefined(v)) return "";
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "True" : "False";
  if (v.is_null()) return "None";
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  if (v.is_number_unsigned()) return std::to_string(v.get<uint64_t>());
  if (v.is_number_float()) return python_float(v.get<double>());
  return python_repr(v);
}

std::string python_repr(const Value& v) {
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    const char q = s.find('\'') != std::string::npos && s.find('"') == std::string::npos ? '"' : '\'';
    std::string out(1, q);
    for (const char c : s) {
      if (c == '\\' || c == q) out += '\\';
      if (c == '\n') {
        out += "\\n";
        continue;
      }
      out += c;
    }
    return out + q;
  }
  if (v.is_array()) {
    std::string out = "[";
    for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + python_repr(v[i]);
    return out + "]";
  }
  if (v.is_object()) {
    std::string out = "{";
    bool first = true;
    for (const auto& [k, x] : v.items()) {
      out += (first ? "" : ", ") + python_repr(Value(k)) + ": " + python_repr(x);
      first = false;
    }
    return out + "}";
  }
  return python_str(v);
}

// json.dumps(v, ensure_ascii=False) with Python's separators, as transformers' tojson filter writes.
std::string python_json(const Value& v, int indent, int level) {
  const std::string nl = indent > 0 ? "\n" + std::string(static_cast<size_t>(indent * (level + 1)), ' ') : "";
  const std::string close = indent > 0 ? "\n" + std::string(static_cast<size_t>(indent * level), ' ') : "";
  const std::string sep = indent > 0 ? "," : ", ";
  if (v.is_array()) {
    if (v.empty()) return "[]";
    std::string out = "[";
    for (size_t i = 0; i < v.size(); ++i) out += (i ? sep : "") + nl + python_json(v[i], indent, level + 1);
    return out + close + "]";
  }
  if (v.is_object()) {
    if (v.empty()) return "{}";
    std::string out = "{";
    bool first = true;
    for (const auto& [k, x] : v.items()) {
      out += (first ? "" : sep) + nl + Value(k).dump() + ": " + python_json(x, indent, level + 1);
      first = false;
    }
    return out + close + "}";
  }
  if (is_undefined(v) || v.is_null()) return "null";
  if (v.is_number_float()) return python_float(v.get<double>());
  return v.dump(-1, ' ', false, Value::error_handler_t::replace);
}

bool is_namespace(const Value& v) { return v.is_object() && v.contains("__namespace__"); }

// ------------------------------------------------------------------------------------------------ rendering

class Renderer {
 public:
  Renderer(const Lexer& lex, Value globals) : lex_(lex) { scopes_.push_back(std::move(globals)); }

  void run(const Node& n) {
    switch (n.kind) {
      case Node::Kind::sequence:
        for (const auto& c : n.body) run(*c);
        return;
      case Node::Kind::text:
        emit(n.text);
        return;
      case Node::Kind::output:
        emit(python_str(eval(*n.expr)));
        return;
      case Node::Kind::branch:
        for (const auto& [cond, body] : n.branches) {
          if (!cond || truthy(eval(*cond))) {
            run(*body);
            return;
          }
        }
        return;
      case Node::Kind::assign:
        assign(n);
        return;
      case Node::Kind::loop:
        loop(n);
        return;
    }
  }
  std::string take() { return std::move(out_); }

 private:
  [[noreturn]] void fail(size_t offset, std::string_view what) const { lex_.fail(offset, what); }

  void emit(std::string_view s) {
    out_.append(s);
    if (out_.size() > kMaxOutputBytes) {
      throw ApiError(400, fmt::format("[serve] the chat template wrote more than {} MiB for these messages; send "
                                      "shorter messages",
                                      kMaxOutputBytes >> 20),
                     std::string("messages"));
    }
  }
  void count_iteration() {
    if (++iterations_ > kMaxIterations) {
      throw ApiError(400, fmt::format("[serve] the chat template ran more than {} loop iterations for these "
                                      "messages",
                                      kMaxIterations),
                     std::string("messages"));
    }
  }

  Value* find(const std::string& name) {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end()) return &*f;
    }
    return nullptr;
  }

  void assign(const Node& n) {
    Value v = eval(*n.expr);
    if (n.attr.empty()) {
      scopes_.back()[n.target] = std::move(v);
      return;
    }
    Value* ns = find(n.target);
    if (!ns || !is_namespace(*ns)) fail(n.offset, fmt::format("'{}' is not a namespace(); only a namespace's "
                                                             "attributes can be set", n.target));
    (*ns)[n.attr] = std::move(v);
  }

  void loop(const Node& n) {
    Value seq = eval(*n.expr);
    std::vector<Value> items;
    if (seq.is_array()) {
      items.assign(seq.begin(), seq.end());
    } else if (seq.is_object() && !is_namespace(seq)) {
      for (const auto& [k, v] : seq.items()) items.emplace_back(k);
    } else if (seq.is_string()) {
      for (const char c : seq.get<std::string>()) items.emplace_back(std::string(1, c));
    } else if (!is_undefined(seq) && !seq.is_null()) {
      fail(n.expr->offset, fmt::format("cannot loop over {}", python_repr(seq)));
    }
    auto bind = [&](Value& scope, const Value& item) {
      if (n.vars.size() == 1) {
        scope[n.vars[0]] = item;
        return;
      }
      if (!item.is_array() || item.size() != n.vars.size()) {
        fail(n.offset, fmt::format("cannot unpack {} into {} loop variables", python_repr(item), n.vars.size()));
      }
      for (size_t k = 0; k < n.vars.size(); ++k) scope[n.vars[k]] = item[k];
    };
    if (n.filter) {  // "for x in xs if cond": the loop sees only the items that pass
      std::vector<Value> kept;
      for (const Value& item : items) {
        count_iteration();
        scopes_.emplace_back(Value::object());
        bind(scopes_.back(), item);
        const bool keep = truthy(eval(*n.filter));
        scopes_.pop_back();
        if (keep) kept.push_back(item);
      }
      items.swap(kept);
    }
    if (items.empty()) {
      if (n.loop_else) run(*n.loop_else);
      return;
    }
    const auto length = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < length; ++i) {
      count_iteration();
      Value scope = Value::object();
      bind(scope, items[static_cast<size_t>(i)]);
      Value loop_var = Value::object();
      loop_var["index0"] = i;
      loop_var["index"] = i + 1;
      loop_var["revindex0"] = length - 1 - i;
      loop_var["revindex"] = length - i;
      loop_var["first"] = i == 0;
      loop_var["last"] = i == length - 1;
      loop_var["length"] = length;
      loop_var["previtem"] = i > 0 ? items[static_cast<size_t>(i - 1)] : undefined();
      loop_var["nextitem"] = i + 1 < length ? items[static_cast<size_t>(i + 1)] : undefined();
      scope["loop"] = std::move(loop_var);
      scopes_.push_back(std::move(scope));
      run(*n.loop_body);
      scopes_.pop_back();
    }
  }

  static int64_t as_int(const Value& v) {
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number()) {
      const double d = v.get<double>();
      return std::isnan(d) ? 0 : static_cast<int64_t>(std::clamp(d, -9.0e18, 9.0e18));
    }
    if (v.is_boolean()) return v.get<bool>() ? 1 : 0;
    return 0;
  }

  Value arith(const std::string& op, const Value& a, const Value& b, size_t off) {
    if (op == "+") {
      if (a.is_string() && b.is_string()) return a.get<std::string>() + b.get<std::string>();
      if (a.is_array() && b.is_array()) {
        Value out = a;
        for (const auto& x : b) out.push_back(x);
        return out;
      }
    }
    if (op == "*" && a.is_string() && b.is_number_integer()) {
      std::string out;
      for (int64_t i = 0; i < b.get<int64_t>() && out.size() < kMaxOutputBytes; ++i) out += a.get<std::string>();
      return out;
    }
    const bool numeric = (a.is_number() || a.is_boolean()) && (b.is_number() || b.is_boolean());
    if (!numeric) {
      fail(off, fmt::format("cannot apply '{}' to {} and {}", op, python_repr(a), python_repr(b)));
    }
    const bool ints = !a.is_number_float() && !b.is_number_float();
    if (op == "/") {
      const double d = b.get<double>();
      if (d == 0) fail(off, "division by zero");
      return a.get<double>() / d;
    }
    if (ints) {
      const int64_t x = as_int(a), y = as_int(b);
      int64_t r = 0;
      const bool overflow = op == "+"   ? __builtin_add_overflow(x, y, &r)
                            : op == "-" ? __builtin_sub_overflow(x, y, &r)
                            : op == "*" ? __builtin_mul_overflow(x, y, &r)
                                        : (y == -1 && x == std::numeric_limits<int64_t>::min());
      if (overflow) fail(off, fmt::format("integer overflow in {} {} {}", x, op, y));
      if (op == "+" || op == "-" || op == "*") return r;
      if (y == 0) fail(off, "division by zero");
      // Python's floor division and modulo: the remainder takes the divisor's sign.
      int64_t q = x / y, m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) {
        --q;
        m += y;
      }
      return op == "//" ? q : m;
    }
    const double x = a.is_boolean() ? as_int(a) : a.get<double>(), y = b.is_boolean() ? as_int(b) : b.get<double>();
    if (op == "+") return x + y;
    if (op == "-") return x - y;
    if (op == "*") return x * y;
    if (y == 0) fail(off, "division by zero");
    if (op == "//") return std::floor(x / y);
    return std::fmod(std::fmod(x, y) + y, y);
  }

  static bool contains(const Value& hay, const Value& needle) {
    if (hay.is_string()) return needle.is_string() && hay.get<std::string>().find(needle.get<std::string>()) != std::string::npos;
    if (hay.is_array()) return std::find(hay.begin(), hay.end(), needle) != hay.end();
    if (hay.is_object()) return needle.is_string() && hay.contains(needle.get<std::string>());
    return false;
  }

  bool compare(const std::string& op, const Value& a, const Value& b, size_t off) {
    if (op == "==") return a == b;
    if (op == "!=") return a != b;
    if (op == "in") return contains(b, a);
    if (op == "not in") return !contains(b, a);
    const bool ok = (a.is_number() && b.is_number()) || (a.is_string() && b.is_string());
    if (!ok) fail(off, fmt::format("cannot compare {} and {} with '{}'", python_repr(a), python_repr(b), op));
    if (op == "<") return a < b;
    if (op == "<=") return a <= b;
    if (op == ">") return a > b;
    return a >= b;
  }

  std::vector<Value> evaluated(const Expr& e, size_t from) {
    std::vector<Value> out;
    for (size_t i = from; i < e.args.size(); ++i) out.push_back(eval(*e.args[i]));
    return out;
  }
  std::optional<Value> kwarg(const Expr& e, std::string_view name) {
    for (const auto& [k, v] : e.kwargs) {
      if (k == name) return eval(*v);
    }
    return std::nullopt;
  }

  static std::string strip(const std::string& s, const std::string& chars, bool left, bool right) {
    size_t b = 0, e = s.size();
    while (left && b < e && chars.find(s[b]) != std::string::npos) ++b;
    while (right && e > b && chars.find(s[e - 1]) != std::string::npos) --e;
    return s.substr(b, e - b);
  }

  Value string_method(const std::string& s, const std::string& m, const std::vector<Value>& a, size_t off) {
    auto arg = [&](size_t i) -> std::string {
      if (i >= a.size() || !a[i].is_string()) fail(off, fmt::format("{}() needs a string argument", m));
      return a[i].get<std::string>();
    };
    const std::string ws = " \t\r\n\v\f";
    if (m == "strip" || m == "lstrip" || m == "rstrip") {
      const std::string chars = a.empty() || a[0].is_null() ? ws : arg(0);
      return strip(s, chars, m != "rstrip", m != "lstrip");
    }
    if (m == "startswith") return s.rfind(arg(0), 0) == 0;
    if (m == "endswith") {
      const std::string x = arg(0);
      return s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
    }
    if (m == "upper" || m == "lower") {
      std::string out = s;
      for (char& c : out) c = static_cast<char>(m == "upper" ? std::toupper(static_cast<unsigned char>(c))
                                                             : std::tolower(static_cast<unsigned char>(c)));
      return out;
    }
    if (m == "replace") {
      const std::string from = arg(0), to = arg(1);
      if (from.empty()) return s;
      std::string out;
      size_t p = 0, q;
      while ((q = s.find(from, p)) != std::string::npos) {
        out += s.substr(p, q - p) + to;
        p = q + from.size();
      }
      return out + s.substr(p);
    }
    if (m == "split") {
      Value out = Value::array();
      if (a.empty() || a[0].is_null()) {  // runs of whitespace
        std::istringstream in(s);
        std::string w;
        while (in >> w) out.push_back(w);
        return out;
      }
      const std::string sep = arg(0);
      if (sep.empty()) fail(off, "split() with an empty separator");
      size_t p = 0, q;
      while ((q = s.find(sep, p)) != std::string::npos) {
        out.push_back(s.substr(p, q - p));
        p = q + sep.size();
      }
      out.push_back(s.substr(p));
      return out;
    }
    if (m == "title" || m == "capitalize") {
      std::string out = s;
      bool start = true;
      for (char& c : out) {
        const auto u = static_cast<unsigned char>(c);
        if (m == "capitalize") {
          c = static_cast<char>(start ? std::toupper(u) : std::tolower(u));
          start = false;
        } else {
          c = static_cast<char>(start ? std::toupper(u) : std::tolower(u));
          start = !std::isalpha(u);
        }
      }
      return out;
    }
    fail(off, fmt::format("the string method '{}' is not supported", m));
  }

  Value method(const Value& obj, const std::string& m, const Expr& call) {
    const std::vector<Value> a = evaluated(call, 1);
    if (obj.is_string()) return string_method(obj.get<std::string>(), m, a, call.offset);
    if (obj.is_object() && !is_namespace(obj)) {
      if (m == "items") {
        Value out = Value::array();
        for (const auto& [k, v] : obj.items()) out.push_back(Value::array({k, v}));
        return out;
      }
      if (m == "keys" || m == "values") {
        Value out = Value::array();
        for (const auto& [k, v] : obj.items()) out.push_back(m == "keys" ? Value(k) : v);
        return out;
      }
      if (m == "get") {
        if (a.empty() || !a[0].is_string()) fail(call.offset, "get() needs a key");
        auto it = obj.find(a[0].get<std::string>());
        return it != obj.end() ? *it : (a.size() > 1 ? a[1] : Value(nullptr));
      }
    }
    fail(call.offset, fmt::format("{} has no method '{}'", python_repr(obj).substr(0, 40), m));
  }

  Value function(const std::string& f, const Expr& call) {
    if (f == "raise_exception") {
      const std::vector<Value> a = evaluated(call, 1);
      throw ApiError(400, fmt::format("[serve] the model's chat template refuses these messages: {}",
                                      a.empty() ? std::string("(no reason given)") : python_str(a[0])),
                     std::string("messages"));
    }
    if (f == "namespace") {
      Value ns = Value::object();
      ns["__namespace__"] = true;
      for (const auto& [k, v] : call.kwargs) ns[k] = eval(*v);
      return ns;
    }
    if (f == "range") {
      const std::vector<Value> a = evaluated(call, 1);
      int64_t lo = 0, hi = 0, step = 1;
      if (a.size() == 1) hi = as_int(a[0]);
      if (a.size() >= 2) lo = as_int(a[0]), hi = as_int(a[1]);
      if (a.size() == 3) step = as_int(a[2]);
      if (a.empty() || a.size() > 3 || step == 0) fail(call.offset, "range() takes 1 to 3 integers, step not 0");
      Value out = Value::array();
      for (int64_t i = lo; step > 0 ? i < hi : i > hi;) {
        count_iteration();
        out.push_back(i);
        if (__builtin_add_overflow(i, step, &i)) break;
      }
      return out;
    }
    if (f == "strftime_now") {
      const std::vector<Value> a = evaluated(call, 1);
      if (a.empty() || !a[0].is_string()) fail(call.offset, "strftime_now() needs a format string");
      const std::time_t now = std::time(nullptr);
      std::tm tm{};
      localtime_r(&now, &tm);
      char buf[256];
      const size_t n = std::strftime(buf, sizeof buf, a[0].get<std::string>().c_str(), &tm);
      return std::string(buf, n);
    }
    fail(call.offset, fmt::format("the function '{}' is not available in chat templates here (available: "
                                  "raise_exception, namespace, range, strftime_now)",
                                  f));
  }

  Value apply_filter(const Expr& e) {
    const Value v = eval(*e.args[0]);
    const std::vector<Value> a = evaluated(e, 1);
    const std::string& f = e.name;
    if (f == "trim" || f == "strip") return string_method(python_str(v), "strip", {}, e.offset);
    if (f == "length" || f == "count") {
      if (v.is_string() || v.is_array() || v.is_object()) return static_cast<int64_t>(size_of(v));
      return int64_t{0};
    }
    if (f == "upper" || f == "lower" || f == "title" || f == "capitalize") {
      return string_method(python_str(v), f, {}, e.offset);
    }
    if (f == "replace") return string_method(python_str(v), "replace", a, e.offset);
    if (f == "first" || f == "last") {
      if ((v.is_array() || v.is_string()) && size_of(v) != 0) {
        if (v.is_string()) {
          const auto n = static_cast<int64_t>(size_of(v));
          return f == "first" ? chars(v.get<std::string>(), 0, 1) : chars(v.get<std::string>(), n - 1, n);
        }
        return f == "first" ? v.front() : v.back();
      }
      return undefined();
    }
    if (f == "default" || f == "d") {
      const bool boolean = a.size() > 1 && truthy(a[1]);
      const bool use_default = is_undefined(v) || (boolean && !truthy(v));
      return use_default ? (a.empty() ? Value("") : a[0]) : v;
    }
    if (f == "tojson") {
      int indent = 0;
      if (auto k = kwarg(e, "indent")) indent = static_cast<int>(as_int(*k));
      else if (!a.empty()) indent = static_cast<int>(as_int(a[0]));
      return python_json(v, std::clamp(indent, 0, 16), 0);
    }
    if (f == "string") return python_str(v);
    if (f == "safe") return v;
    if (f == "int") {
      if (v.is_string()) {
        char* end = nullptr;
        const long long x = std::strtoll(v.get<std::string>().c_str(), &end, 10);
        return *end == '\0' ? Value(static_cast<int64_t>(x)) : Value(int64_t{0});
      }
      return as_int(v);
    }
    if (f == "float") return v.is_number() ? v.get<double>() : 0.0;
    if (f == "abs") {
      if (v.is_number_float()) return std::fabs(v.get<double>());
      const int64_t x = as_int(v);
      if (x == std::numeric_limits<int64_t>::min()) fail(e.offset, "integer overflow in abs");
      return x < 0 ? -x : x;
    }
    if (f == "join") {
      const std::string sep = a.empty() ? "" : python_str(a[0]);
      std::string out;
      if (v.is_array()) {
        for (size_t i = 0; i < v.size(); ++i) out += (i ? sep : "") + python_str(v[i]);
      }
      return out;
    }
    if (f == "list") {
      if (v.is_array()) return v;
      Value out = Value::array();
      if (v.is_string()) {
        for (const char c : v.get<std::string>()) out.push_back(std::string(1, c));
      } else if (v.is_object()) {
        for (const auto& [k, x] : v.items()) out.push_back(k);
      }
      return out;
    }
    if (f == "reverse") {
      if (v.is_string()) return std::string(v.get<std::string>().rbegin(), v.get<std::string>().rend());
      if (v.is_array()) return Value(std::vector<Value>(v.rbegin(), v.rend()));
      return v;
    }
    if (f == "items") {
      Value out = Value::array();
      if (v.is_object()) {
        for (const auto& [k, x] : v.items()) out.push_back(Value::array({k, x}));
      }
      return out;
    }
    fail(e.offset, fmt::format("the filter '{}' is not supported in chat templates here", f));
  }

  bool apply_test(const Expr& e) {
    const Value v = eval(*e.args[0]);
    const std::vector<Value> a = evaluated(e, 1);
    const std::string& t = e.name;
    if (t == "defined") return !is_undefined(v);
    if (t == "undefined") return is_undefined(v);
    if (t == "none") return v.is_null();
    if (t == "string") return v.is_string();
    if (t == "number") return v.is_number();
    if (t == "integer") return v.is_number_integer();
    if (t == "float") return v.is_number_float();
    if (t == "boolean") return v.is_boolean();
    if (t == "true") return v.is_boolean() && v.get<bool>();
    if (t == "false") return v.is_boolean() && !v.get<bool>();
    if (t == "mapping") return v.is_object();
    if (t == "sequence" || t == "iterable") return v.is_array() || v.is_string() || (t == "iterable" && v.is_object());
    if (t == "even" || t == "odd") return v.is_number_integer() && (v.get<int64_t>() % 2 == 0) == (t == "even");
    if (t == "divisibleby") return !a.empty() && as_int(a[0]) != 0 && as_int(v) % as_int(a[0]) == 0;
    if (t == "equalto" || t == "eq" || t == "sameas") return !a.empty() && v == a[0];
    fail(e.offset, fmt::format("the test '{}' is not supported in chat templates here", t));
  }

  Value eval(const Expr& e) {
    switch (e.kind) {
      case Expr::literal:
        return e.value;
      case Expr::var: {
        const Value* v = find(e.name);
        return v ? *v : undefined();
      }
      case Expr::attr: {
        const Value obj = eval(*e.args[0]);
        if (obj.is_object()) {
          auto it = obj.find(e.name);
          if (it != obj.end()) return *it;
        }
        return undefined();
      }
      case Expr::index: {
        const Value obj = eval(*e.args[0]);
        const Value key = eval(*e.args[1]);
        if (obj.is_object() && key.is_string()) {
          auto it = obj.find(key.get<std::string>());
          return it != obj.end() ? *it : undefined();
        }
        if ((obj.is_array() || obj.is_string()) && key.is_number_integer()) {
          int64_t i = key.get<int64_t>();
          const auto n = static_cast<int64_t>(size_of(obj));
          if (i < 0) i += n;
          if (i < 0 || i >= n) return undefined();
          if (obj.is_string()) return chars(obj.get<std::string>(), i, i + 1);
          return obj[static_cast<size_t>(i)];
        }
        return undefined();
      }
      case Expr::slice: {
        const Value obj = eval(*e.args[0]);
        if (!obj.is_array() && !obj.is_string()) fail(e.offset, "only lists and strings can be sliced");
        const auto n = static_cast<int64_t>(size_of(obj));
        auto bound = [&](const ExprP& x, int64_t dflt) {
          if (!x) return dflt;
          int64_t i = as_int(eval(*x));
          if (i < 0) i += n;
          return std::clamp<int64_t>(i, 0, n);
        };
        const int64_t lo = bound(e.args[1], 0), hi = std::max(lo, bound(e.args[2], n));
        if (obj.is_string()) return chars(obj.get<std::string>(), lo, hi);
        return Value(std::vector<Value>(obj.begin() + lo, obj.begin() + hi));
      }
      case Expr::call: {
        const Expr& callee = *e.args[0];
        if (callee.kind == Expr::attr) return method(eval(*callee.args[0]), callee.name, e);
        if (callee.kind == Expr::var) return function(callee.name, e);
        fail(e.offset, "only functions and methods can be called");
      }
      case Expr::filter:
        return apply_filter(e);
      case Expr::test: {
        const bool r = apply_test(e);
        return e.negated ? !r : r;
      }
      case Expr::unary: {
        const Value v = eval(*e.args[0]);
        if (e.name == "not") return !truthy(v);
        if (!v.is_number()) fail(e.offset, fmt::format("cannot apply unary '{}' to {}", e.name, python_repr(v)));
        if (e.name == "+") return v;
        if (v.is_number_float()) return -v.get<double>();
        if (as_int(v) == std::numeric_limits<int64_t>::min()) fail(e.offset, "integer overflow in unary '-'");
        return -as_int(v);
      }
      case Expr::binary: {
        if (e.name == "and") {
          const Value l = eval(*e.args[0]);
          return truthy(l) ? eval(*e.args[1]) : l;
        }
        if (e.name == "or") {
          const Value l = eval(*e.args[0]);
          return truthy(l) ? l : eval(*e.args[1]);
        }
        const Value l = eval(*e.args[0]), r = eval(*e.args[1]);
        if (e.name == "~") return python_str(l) + python_str(r);
        if (e.name == "+" || e.name == "-" || e.name == "*" || e.name == "/" || e.name == "//" || e.name == "%") {
          return arith(e.name, l, r, e.offset);
        }
        return compare(e.name, l, r, e.offset);
      }
      case Expr::ternary:
        if (truthy(eval(*e.args[0]))) return eval(*e.args[1]);
        return e.args.size() > 2 ? eval(*e.args[2]) : undefined();
      case Expr::list: {
        Value out = Value::array();
        for (const auto& x : e.args) out.push_back(eval(*x));
        return out;
      }
      case Expr::dict: {
        Value out = Value::object();
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
          const Value k = eval(*e.args[i]);
          out[python_str(k)] = eval(*e.args[i + 1]);
        }
        return out;
      }
    }
    return undefined();
  }

  const Lexer& lex_;
  std::vector<Value> scopes_;
  std::string out_;
  int64_t iterations_ = 0;
};

}  // namespace jinja

ChatTemplate ChatTemplate::parse(std::string_view source, std::string origin) {
  DS_CHECK_AS(ConfigError, source.size() <= jinja::kMaxTemplateBytes,
              "[chat template] {} is {} bytes; chat templates are kilobytes, the limit is {} bytes", origin,
              source.size(), jinja::kMaxTemplateBytes);
  ChatTemplate t;
  t.origin_ = std::move(origin);
  // Jinja drops one newline at the very end of a template (keep_trailing_newline is off).
  if (!source.empty() && source.back() == '\n') source.remove_suffix(1);
  auto src = std::make_shared<const std::string>(source);
  jinja::Lexer lex(*src, t.origin_);
  jinja::Parser parser(lex.segments(), lex);
  t.root_ = parser.parse();
  t.source_ = std::move(src);
  return t;
}

std::string ChatTemplate::render(const ChatTemplateInput& input) const {
  Value globals = Value::object();
  Value messages = Value::array();
  for (const ChatMessage& m : input.messages) {
    Value msg = Value::object();
    msg["role"] = m.role;
    msg["content"] = m.content;
    messages.push_back(std::move(msg));
  }
  globals["messages"] = std::move(messages);
  globals["add_generation_prompt"] = input.add_generation_prompt;
  globals["bos_token"] = input.bos_token;
  globals["eos_token"] = input.eos_token;
  const jinja::Lexer lex(*source_, origin_);
  jinja::Renderer r(lex, std::move(globals));
  r.run(*root_);
  return r.take();
}

namespace {

std::string read_text(const std::string& path, std::string_view what) {
  std::ifstream in(path, std::ios::binary);
  DS_CHECK_AS(IoError, in.good(), "[serve] cannot read {} '{}'", what, path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

ChatFormat load_chat_format(const std::string& tokenizer_dir, const std::string& template_file) {
  ChatFormat f;
  std::optional<std::string> tokenizer_template;  // and where in the file it came from
  std::string config_path;
  if (!tokenizer_dir.empty()) config_path = (std::filesystem::path(tokenizer_dir) / "tokenizer_config.json").string();
  if (!config_path.empty() && std::filesystem::exists(config_path)) {
    nlohmann::json j;
    const std::string problem = parse_json_bounded(read_text(config_path, "the tokenizer config"), JsonLimits{}, j);
    DS_CHECK_AS(ConfigError, problem.empty() && j.is_object(), "[chat template] '{}' is not a JSON object ({}); it "
                "should be a tokenizer_config.json", config_path, problem.empty() ? "not an object" : problem);
    auto token = [&](const char* key) -> std::string {
      if (!j.contains(key)) return "";
      const nlohmann::json& v = j[key];
      if (v.is_string()) return v.get<std::string>();
      if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
      return "";
    };
    f.bos_token = token("bos_token");
    f.eos_token = token("eos_token");
    const nlohmann::json t = j.value("chat_template", nlohmann::json());
    if (t.is_string()) {
      tokenizer_template = t.get<std::string>();
    } else if (!t.is_null()) {
      DS_CHECK_AS(ConfigError, t.is_array(), "[chat template] '{}': chat_template should be a string or a list of "
                  "{{\"name\", \"template\"}}, found {}", config_path, json_excerpt(t));
      for (const auto& named : t) {
        if (named.is_object() && named.value("name", "") == "default" && named.contains("template") &&
            named["template"].is_string()) {
          tokenizer_template = named["template"].get<std::string>();
        }
      }
      DS_CHECK_AS(ConfigError, tokenizer_template.has_value(), "[chat template] '{}' lists chat templates but none "
                  "named \"default\"", config_path);
    }
  }
  if (!template_file.empty()) {  // the file given wins; the tokenizer config's template is not even read
    f.jinja = std::make_shared<const ChatTemplate>(
        ChatTemplate::parse(read_text(template_file, "the chat template (--chat-template)"), "'" + template_file + "'"));
    f.origin = template_file;
  } else if (tokenizer_template) {
    f.jinja = std::make_shared<const ChatTemplate>(ChatTemplate::parse(*tokenizer_template, "'" + config_path + "'"));
    f.origin = config_path;
  }
  return f;
}

}  // namespace ds::serve
