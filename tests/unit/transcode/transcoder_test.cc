// REST→gRPC transcoding against the bookstore test service (testdata/bookstore.proto, compiled
// into a descriptor set at build time): which binding a request matches, the request message
// built from the path, query and body, the JSON of responses, and load errors. Messages are
// compared as JSON printed by an independent pool built from the same descriptor set.
#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/dynamic_message.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <thread>

#include "meridian/transcode/transcoder.h"

namespace meridian::transcode {
namespace {

namespace pb = google::protobuf;

constexpr const char* k_set_path = MERIDIAN_BOOKSTORE_DESCRIPTOR_SET;

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The test's own view of the bookstore messages, independent of the library's.
class bookstore_types {
 public:
  bookstore_types() {
    set_.ParseFromString(read_all(k_set_path));
    for (const auto& file : set_.file()) pool_.BuildFile(file);  // protoc orders imports first
  }

  // Returns the JSON of `bytes` as a message of type `type` ("bookstore.v1.Book").
  std::string json(const std::string& type, const std::string& bytes) {
    std::unique_ptr<pb::Message> m(prototype(type)->New());
    EXPECT_TRUE(m->ParseFromString(bytes)) << type;
    std::string out;
    EXPECT_TRUE(pb::util::MessageToJsonString(*m, &out).ok());
    return out;
  }

  // Returns the wire bytes of the message of type `type` that `json` spells.
  std::string bytes(const std::string& type, const std::string& json) {
    std::unique_ptr<pb::Message> m(prototype(type)->New());
    EXPECT_TRUE(pb::util::JsonStringToMessage(json, m.get()).ok()) << json;
    return m->SerializeAsString();
  }

  pb::FileDescriptorSet& set() { return set_; }

 private:
  const pb::Message* prototype(const std::string& type) {
    const pb::Descriptor* d = pool_.FindMessageTypeByName(type);
    EXPECT_NE(d, nullptr) << type;
    return factory_.GetPrototype(d);
  }

  pb::FileDescriptorSet set_;
  pb::DescriptorPool pool_;
  pb::DynamicMessageFactory factory_{&pool_};
};

class transcoder_test : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string error;
    t_ = transcoder::load(k_set_path, {}, &error).release();
    ASSERT_NE(t_, nullptr) << error;
    types_ = new bookstore_types();
  }
  static void TearDownTestSuite() {
    delete t_;
    delete types_;
  }

  // Matches and returns the gRPC method's name ("GetBook"), or "" when nothing matches.
  static std::string method_of(std::string_view method, std::string_view path) {
    auto m = t_->match(method, path);
    if (!m) return "";
    std::string_view grpc = t_->grpc_path(*m);
    return std::string(grpc.substr(grpc.rfind('/') + 1));
  }

  static std::vector<std::string> values(const binding_match& m) {
    std::vector<std::string> out;
    for (size_t i = 0; i < m.variable_count; ++i) out.emplace_back(m.value(i));
    return out;
  }

  // Builds the request for (method, path?query, body); returns its JSON as `type`, or
  // "error: ..." when it fails.
  static std::string request(const std::string& type, std::string_view method,
                             std::string_view target, std::string_view body = "") {
    size_t q = target.find('?');
    std::string_view path = target.substr(0, q);
    std::string_view query = q == std::string_view::npos ? "" : target.substr(q + 1);
    auto m = t_->match(method, path);
    if (!m) return "error: no match";
    std::string frame, error;
    if (!t_->build_request(*m, query, body, &frame, &error)) {
      EXPECT_FALSE(error.empty());
      return "error: " + error;
    }
    EXPECT_GE(frame.size(), 5u);
    EXPECT_EQ(frame[0], '\0');
    uint32_t length = (uint32_t{static_cast<uint8_t>(frame[1])} << 24) |
                      (uint32_t{static_cast<uint8_t>(frame[2])} << 16) |
                      (uint32_t{static_cast<uint8_t>(frame[3])} << 8) |
                      uint32_t{static_cast<uint8_t>(frame[4])};
    EXPECT_EQ(length, frame.size() - 5);
    return types_->json(type, frame.substr(5));
  }

  // Converts the response `json` (of `type`) as the binding matched by (method, path) says.
  static std::string response(std::string_view method, std::string_view path,
                              const std::string& type, const std::string& json) {
    auto m = t_->match(method, path);
    EXPECT_TRUE(m.has_value()) << path;
    if (!m) return "";
    std::string out, error;
    EXPECT_TRUE(t_->response_to_json(*m, types_->bytes(type, json), &out, &error)) << error;
    return out;
  }

  static bool is_error(const std::string& result, std::string_view mentions) {
    return result.rfind("error: ", 0) == 0 && result.find(mentions) != std::string::npos;
  }

  static transcoder* t_;
  static bookstore_types* types_;
};

transcoder* transcoder_test::t_ = nullptr;
bookstore_types* transcoder_test::types_ = nullptr;

// --- matching ---------------------------------------------------------------------------------

TEST_F(transcoder_test, a_get_with_two_path_variables_captures_both) {
  auto m = t_->match("GET", "/v1/shelves/1/books/22");
  ASSERT_TRUE(m);
  EXPECT_EQ(t_->grpc_path(*m), "/bookstore.v1.Bookstore/GetBook");
  EXPECT_EQ(values(*m), (std::vector<std::string>{"1", "22"}));
  EXPECT_EQ(t_->variable_field(*m, 0), "shelf");
  EXPECT_EQ(t_->variable_field(*m, 1), "book");
  EXPECT_FALSE(t_->server_streaming(*m));
  EXPECT_FALSE(t_->client_streaming(*m));
}

TEST_F(transcoder_test, a_literal_segment_beats_a_variable_in_the_same_place) {
  EXPECT_EQ(method_of("GET", "/v1/shelves/1/books/featured"), "GetFeaturedBook");
  EXPECT_EQ(method_of("GET", "/v1/shelves/1/books/featuredx"), "GetBook");
}

TEST_F(transcoder_test, a_binding_with_the_requested_verb_beats_a_plain_variable) {
  auto m = t_->match("GET", "/v1/shelves/7:watch");
  ASSERT_TRUE(m);
  EXPECT_EQ(t_->grpc_path(*m), "/bookstore.v1.Bookstore/WatchShelf");
  EXPECT_EQ(values(*m), std::vector<std::string>{"7"});
  EXPECT_TRUE(t_->server_streaming(*m));
  EXPECT_EQ(method_of("GET", "/v1/shelves/7"), "GetShelf");
}

TEST_F(transcoder_test, a_custom_verb_matches_only_bindings_that_declare_it) {
  auto m = t_->match("POST", "/v2/shelves/1/books/2:publish");
  ASSERT_TRUE(m);
  EXPECT_EQ(t_->grpc_path(*m), "/bookstore.v1.Bookstore/PublishBook");
  EXPECT_EQ(values(*m), std::vector<std::string>{"shelves/1/books/2"});
  EXPECT_EQ(method_of("POST", "/v2/shelves/1/books/2:unpublish"), "");
  EXPECT_EQ(method_of("POST", "/v2/shelves/1/books/2"), "");
  // Without a verb in the binding, ':' is part of the segment.
  m = t_->match("GET", "/v2/shelves/1/books/2:publish");
  ASSERT_TRUE(m);
  EXPECT_EQ(t_->grpc_path(*m), "/bookstore.v1.Bookstore/GetBookByName");
  EXPECT_EQ(values(*m), std::vector<std::string>{"shelves/1/books/2:publish"});
}

TEST_F(transcoder_test, the_http_method_selects_among_bindings_of_one_path) {
  EXPECT_EQ(method_of("GET", "/v1/shelves/1/books/2"), "GetBook");
  EXPECT_EQ(method_of("DELETE", "/v1/shelves/1/books/2"), "DeleteBook");
  EXPECT_EQ(method_of("PUT", "/v1/shelves/1/books/2"), "UpdateBook");
  EXPECT_EQ(method_of("POST", "/v1/shelves/1/books/2"), "");
  EXPECT_EQ(method_of("get", "/v1/shelves/1/books/2"), "");  // methods are case-sensitive
}

TEST_F(transcoder_test, a_custom_pattern_binds_its_own_http_method) {
  EXPECT_EQ(method_of("HEAD", "/v1/shelves/3"), "GetShelf");
  EXPECT_EQ(method_of("HEAD", "/v1/shelves/3/books/4"), "");
}

TEST_F(transcoder_test, additional_bindings_route_to_the_same_method) {
  EXPECT_EQ(method_of("PATCH", "/v1/books/9"), "UpdateBook");
  EXPECT_EQ(method_of("PUT", "/v1/shelves/2/books/9"), "UpdateBook");
  EXPECT_EQ(method_of("GET", "/v1/files/a.txt"), "GetFile");
  EXPECT_EQ(method_of("GET", "/v1/assets/css/site.css"), "GetFile");
}

TEST_F(transcoder_test, a_single_segment_variable_never_takes_a_raw_slash) {
  EXPECT_EQ(method_of("GET", "/v1/authors/a/b"), "");
  auto m = t_->match("GET", "/v1/authors/a%2Fb");
  ASSERT_TRUE(m);
  EXPECT_EQ(values(*m), std::vector<std::string>{"a/b"});
}

TEST_F(transcoder_test, percent_encoded_segments_are_decoded_for_literals_and_variables) {
  auto m = t_->match("GET", "/v1/authors/J.%20K.%20Rowling");
  ASSERT_TRUE(m);
  EXPECT_EQ(values(*m), std::vector<std::string>{"J. K. Rowling"});
  EXPECT_EQ(method_of("GET", "/v1/%73helves/1"), "GetShelf");
  EXPECT_EQ(method_of("GET", "/v1/shelves/1/books/%66eatured"), "GetFeaturedBook");
}

TEST_F(transcoder_test, a_multi_segment_variable_keeps_an_encoded_slash_encoded) {
  auto m = t_->match("GET", "/v2/shelves/a%20b/books/c%2Fd");
  ASSERT_TRUE(m);
  EXPECT_EQ(t_->grpc_path(*m), "/bookstore.v1.Bookstore/GetBookByName");
  EXPECT_EQ(values(*m), std::vector<std::string>{"shelves/a b/books/c%2Fd"});
  EXPECT_EQ(method_of("GET", "/v2/shelves/1/books"), "");
  EXPECT_EQ(method_of("GET", "/v2/shelves/1/books/2/3"), "");
  EXPECT_EQ(method_of("GET", "/v2/shelf/1/books/2"), "");
}

TEST_F(transcoder_test, malformed_percent_encoding_matches_nothing) {
  EXPECT_EQ(method_of("GET", "/v1/authors/%zz"), "");
  EXPECT_EQ(method_of("GET", "/v1/authors/abc%4"), "");
  EXPECT_EQ(method_of("GET", "/v1/authors/abc%"), "");
}

TEST_F(transcoder_test, a_double_wildcard_variable_takes_the_rest_of_the_path) {
  auto m = t_->match("GET", "/v1/files/a/b%20c/d.txt");
  ASSERT_TRUE(m);
  EXPECT_EQ(values(*m), std::vector<std::string>{"a/b c/d.txt"});
  m = t_->match("GET", "/v1/files");
  ASSERT_TRUE(m);
  EXPECT_EQ(values(*m), std::vector<std::string>{""});
  m = t_->match("GET", "/v1/assets/x/y");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->variable_count, 0u);
}

TEST_F(transcoder_test, an_empty_segment_does_not_match_a_single_wildcard) {
  EXPECT_EQ(method_of("GET", "/v1/shelves/"), "");
  EXPECT_EQ(method_of("GET", "/v1/shelves//books"), "");
  EXPECT_EQ(method_of("GET", "v1/shelves/1"), "");
  EXPECT_EQ(method_of("GET", ""), "");
}

TEST_F(transcoder_test, a_method_without_annotations_is_not_exposed) {
  EXPECT_EQ(method_of("POST", "/bookstore.v1.Bookstore/DeleteAllShelves"), "");
  EXPECT_EQ(method_of("POST", "/bookstore.v1.Admin/Reset"), "");
}

// --- requests ---------------------------------------------------------------------------------

TEST_F(transcoder_test, path_variables_fill_the_request) {
  EXPECT_EQ(request("bookstore.v1.GetBookRequest", "GET", "/v1/shelves/1/books/22"),
            R"({"shelf":"1","book":"22"})");
}

TEST_F(transcoder_test, a_path_variable_and_query_fill_nested_repeated_and_scalar_fields) {
  EXPECT_EQ(request("bookstore.v1.ListBooksRequest", "GET",
                    "/v1/shelves/5/books?author.name=Le%20Guin&tags=a&tags=b%26c&pageSize=10"
                    "&in_print=true&min_id=18446744073709551615&max_price=9.5&cursor=AQID"
                    "&author.born=1929&title=Earthsea"),
            R"({"shelf":"5","author":{"name":"Le Guin","born":1929},"tags":["a","b&c"],)"
            R"("pageSize":10,"inPrint":true,"minId":"18446744073709551615","maxPrice":9.5,)"
            R"("cursor":"AQID","title":"Earthsea"})");
}

TEST_F(transcoder_test, enums_in_the_query_take_names_or_numbers) {
  EXPECT_EQ(request("bookstore.v1.ListBooksRequest", "GET",
                    "/v1/shelves/5/books?genre=SCIENCE&genres=1&genres=HISTORY&genres=7"),
            R"({"shelf":"5","genre":"SCIENCE","genres":["FICTION","HISTORY",7]})");
}

TEST_F(transcoder_test, plus_in_the_query_is_a_space_and_empty_parameters_are_skipped) {
  EXPECT_EQ(request("bookstore.v1.ListBooksRequest", "GET",
                    "/v1/shelves/5/books?&author.name=Ursula+K.+Le+Guin&&tags=a%2Bb&"),
            R"({"shelf":"5","author":{"name":"Ursula K. Le Guin"},"tags":["a+b"]})");
}

TEST_F(transcoder_test, a_whole_message_body_fills_every_field) {
  EXPECT_EQ(request("bookstore.v1.Shelf", "POST", "/v1/shelves", R"({"id":"3","theme":"sf"})"),
            R"({"id":"3","theme":"sf"})");
  EXPECT_EQ(request("bookstore.v1.Shelf", "POST", "/v1/shelves", R"({"id":3,"theme":"sf"})"),
            R"({"id":"3","theme":"sf"})");
}

TEST_F(transcoder_test, an_empty_body_on_a_body_binding_is_an_empty_message) {
  EXPECT_EQ(request("bookstore.v1.Shelf", "POST", "/v1/shelves", ""), "{}");
  EXPECT_EQ(request("bookstore.v1.Shelf", "POST", "/v1/shelves", " \r\n"), "{}");
}

TEST_F(transcoder_test, a_body_field_takes_the_json_and_the_path_the_rest) {
  EXPECT_EQ(request("bookstore.v1.CreateBookRequest", "POST", "/v1/shelves/4/books",
                    R"({"title":"Dune","author":{"name":"Herbert"},"tags":["sf"],)"
                    R"("genre":"FICTION","price":9.99,"cover":"AQI="})"),
            R"({"shelf":"4","book":{"title":"Dune","author":{"name":"Herbert"},"tags":["sf"],)"
            R"("genre":"FICTION","price":9.99,"cover":"AQI="}})");
}

TEST_F(transcoder_test, a_nested_path_variable_lands_inside_the_body_field) {
  EXPECT_EQ(request("bookstore.v1.UpdateBookRequest", "PATCH", "/v1/books/9?allow_missing=true",
                    R"({"title":"x"})"),
            R"({"book":{"id":"9","title":"x"},"allowMissing":true})");
  EXPECT_EQ(
      request("bookstore.v1.UpdateBookRequest", "PUT", "/v1/shelves/2/books/9", R"({"title":"x"})"),
      R"({"shelf":"2","book":{"id":"9","title":"x"}})");
}

TEST_F(transcoder_test, the_path_wins_over_the_body) {
  EXPECT_EQ(request("bookstore.v1.UpdateBookRequest", "PATCH", "/v1/books/9",
                    R"({"id":"1","title":"x"})"),
            R"({"book":{"id":"9","title":"x"}})");
  EXPECT_EQ(request("bookstore.v1.PublishBookRequest", "POST", "/v2/shelves/1/books/2:publish",
                    R"({"name":"shelves/6/books/6","channel":"web"})"),
            R"({"name":"shelves/1/books/2","channel":"web"})");
}

TEST_F(transcoder_test, a_repeated_body_field_takes_a_json_array) {
  EXPECT_EQ(request("bookstore.v1.TagBooksRequest", "POST", "/v1/shelves/1/tags", R"(["a","b"])"),
            R"({"shelf":"1","tags":["a","b"]})");
}

TEST_F(transcoder_test, a_non_message_body_cannot_smuggle_in_other_fields) {
  EXPECT_TRUE(is_error(
      request("bookstore.v1.TagBooksRequest", "POST", "/v1/shelves/1/tags", R"(["a"],"x":"9")"),
      "request body"));
  EXPECT_TRUE(is_error(request("bookstore.v1.TagBooksRequest", "POST", "/v1/shelves/1/tags",
                               R"(["a"]} , {"tags":["b"])"),
                       "request body"));
}

TEST_F(transcoder_test, a_server_streaming_method_takes_its_request_from_the_path) {
  EXPECT_EQ(request("bookstore.v1.GetShelfRequest", "GET", "/v1/shelves/7:watch"),
            R"({"shelf":"7"})");
}

TEST_F(transcoder_test, a_double_wildcard_capture_fills_a_string_field) {
  EXPECT_EQ(request("bookstore.v1.GetFileRequest", "GET", "/v1/files/a/b%2Fc"),
            R"({"path":"a/b%2Fc"})");
}

// --- request errors ---------------------------------------------------------------------------

TEST_F(transcoder_test, an_unknown_query_parameter_is_refused) {
  EXPECT_TRUE(
      is_error(request("bookstore.v1.ListBooksRequest", "GET", "/v1/shelves/5/books?colour=red"),
               "\"colour\""));
  EXPECT_TRUE(
      is_error(request("bookstore.v1.ListBooksRequest", "GET", "/v1/shelves/5/books?author.nom=x"),
               "author.nom"));
}

TEST_F(transcoder_test, a_query_parameter_on_a_field_the_path_binds_is_refused) {
  EXPECT_TRUE(
      is_error(request("bookstore.v1.ListBooksRequest", "GET", "/v1/shelves/5/books?shelf=6"),
               "bound by the path"));
  EXPECT_TRUE(
      is_error(request("bookstore.v1.UpdateBookRequest", "PATCH", "/v1/books/9?book.id=3", R"({})"),
               "book"));
}

TEST_F(transcoder_test, a_query_parameter_on_a_whole_body_binding_is_refused) {
  EXPECT_TRUE(is_error(request("bookstore.v1.Shelf", "POST", "/v1/shelves?theme=x", "{}"),
                       "takes every field from the body"));
}

TEST_F(transcoder_test, a_query_parameter_inside_the_body_field_is_refused) {
  EXPECT_TRUE(is_error(
      request("bookstore.v1.CreateBookRequest", "POST", "/v1/shelves/4/books?book.title=x", "{}"),
      "comes from the body"));
}

TEST_F(transcoder_test, a_singular_field_given_twice_is_refused) {
  EXPECT_TRUE(is_error(
      request("bookstore.v1.ListBooksRequest", "GET", "/v1/shelves/5/books?page_size=1&pageSize=2"),
      "more than once"));
}

TEST_F(transcoder_test, two_members_of_a_oneof_are_refused) {
  EXPECT_TRUE(is_error(
      request("bookstore.v1.ListBooksRequest", "GET", "/v1/shelves/5/books?title=a&isbn=b"),
      "oneof"));
}

TEST_F(transcoder_test, a_query_parameter_naming_a_message_is_refused) {
  EXPECT_TRUE(
      is_error(request("bookstore.v1.ListBooksRequest", "GET", "/v1/shelves/5/books?author=x"),
               "is a message"));
}

TEST_F(transcoder_test, query_values_of_the_wrong_type_are_refused) {
  const char* bad[] = {"page_size=ten", "page_size=99999999999", "page_size=1.5", "min_id=-1",
                       "in_print=yes",  "genre=POETRY",          "cursor=!!",     "max_price=inf",
                       "page_size=",    "author.name=%FF",       "tags=%zz"};
  for (const char* q : bad) {
    std::string target = std::string("/v1/shelves/5/books?") + q;
    EXPECT_TRUE(is_error(request("bookstore.v1.ListBooksRequest", "GET", target), ""))
        << q << " was accepted";
  }
}

TEST_F(transcoder_test, a_wrong_type_in_a_path_variable_is_refused) {
  auto m = t_->match("GET", "/v1/shelves/abc/books/2");
  ASSERT_TRUE(m);  // matching does not look at types
  EXPECT_TRUE(is_error(request("bookstore.v1.GetBookRequest", "GET", "/v1/shelves/abc/books/2"),
                       "path variable {shelf}"));
}

TEST_F(transcoder_test, invalid_utf8_in_a_string_path_variable_is_refused) {
  EXPECT_TRUE(
      is_error(request("bookstore.v1.GetAuthorRequest", "GET", "/v1/authors/%C3%28"), "UTF-8"));
  EXPECT_EQ(request("bookstore.v1.GetAuthorRequest", "GET", "/v1/authors/%C3%A9mile"),
            R"({"name":"émile"})");
}

TEST_F(transcoder_test, malformed_json_is_refused) {
  EXPECT_TRUE(
      is_error(request("bookstore.v1.Shelf", "POST", "/v1/shelves", R"({"id":)"), "request body"));
  EXPECT_TRUE(is_error(
      request("bookstore.v1.CreateBookRequest", "POST", "/v1/shelves/4/books", R"({"title": 5)"),
      "request body"));
}

TEST_F(transcoder_test, json_naming_unknown_fields_or_of_the_wrong_type_is_refused) {
  EXPECT_TRUE(is_error(request("bookstore.v1.Shelf", "POST", "/v1/shelves", R"({"colour":"red"})"),
                       "request body"));
  EXPECT_TRUE(is_error(request("bookstore.v1.Shelf", "POST", "/v1/shelves", R"({"id":"abc"})"),
                       "request body"));
  EXPECT_TRUE(is_error(
      request("bookstore.v1.CreateBookRequest", "POST", "/v1/shelves/4/books", R"({"shelf":"4"})"),
      "request body"));  // the body is a Book, which has no shelf
}

TEST_F(transcoder_test, a_body_on_a_binding_without_one_is_refused) {
  EXPECT_TRUE(is_error(request("bookstore.v1.GetBookRequest", "GET", "/v1/shelves/1/books/2", "{}"),
                       "takes no request body"));
  EXPECT_EQ(request("bookstore.v1.GetBookRequest", "GET", "/v1/shelves/1/books/2", "\n"),
            R"({"shelf":"1","book":"2"})");
}

TEST_F(transcoder_test, a_client_streaming_method_is_bound_but_refused) {
  auto m = t_->match("POST", "/v1/books:upload");
  ASSERT_TRUE(m);
  EXPECT_EQ(t_->grpc_path(*m), "/bookstore.v1.Bookstore/UploadBooks");
  EXPECT_TRUE(t_->client_streaming(*m));
  std::string frame, error;
  EXPECT_FALSE(t_->build_request(*m, "", R"({"title":"x"})", &frame, &error));
  EXPECT_NE(error.find("client-streaming"), std::string::npos) << error;
}

TEST_F(transcoder_test, concurrent_requests_on_one_transcoder_build_the_same_messages) {
  auto m = t_->match("GET", "/v1/shelves/5/books");
  ASSERT_TRUE(m);
  std::string expected, error;
  ASSERT_TRUE(t_->build_request(*m, "author.name=x&tags=a&tags=b", "", &expected, &error));
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (size_t i = 0; i < mismatches.size(); ++i) {
    threads.emplace_back([&, i] {
      for (int k = 0; k < 500; ++k) {
        auto mine = t_->match("GET", "/v1/shelves/5/books");
        std::string frame, why;
        if (!mine || !t_->build_request(*mine, "author.name=x&tags=a&tags=b", "", &frame, &why) ||
            frame != expected) {
          ++mismatches[i];
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

// --- responses --------------------------------------------------------------------------------

TEST_F(transcoder_test, a_response_becomes_lower_camel_case_json_without_defaults) {
  EXPECT_EQ(
      response("GET", "/v1/shelves/1/books", "bookstore.v1.ListBooksResponse",
               R"({"books":[{"id":"1","title":"a","inPrint":true,"genre":"GENRE_UNSPECIFIED",)"
               R"("price":0}],"nextPageToken":"t"})"),
      R"({"books":[{"id":"1","title":"a","inPrint":true}],"nextPageToken":"t"})");
  EXPECT_EQ(response("GET", "/v1/shelves/1/books/2", "bookstore.v1.Book", "{}"), "{}");
}

TEST_F(transcoder_test, response_body_sends_one_field_as_the_json_value) {
  EXPECT_EQ(response("GET", "/v1/files/a", "bookstore.v1.File", R"({"path":"a","data":"AQID"})"),
            R"("AQID")");
  EXPECT_EQ(response("POST", "/v1/shelves/1/tags", "bookstore.v1.ListBooksResponse",
                     R"({"books":[{"id":"1"},{"title":"b"}],"nextPageToken":"t"})"),
            R"([{"id":"1"},{"title":"b"}])");
}

TEST_F(transcoder_test, a_response_body_field_at_its_default_is_spelled_out) {
  EXPECT_EQ(response("GET", "/v1/files/a", "bookstore.v1.File", R"({"path":"a"})"), R"("")");
  EXPECT_EQ(response("POST", "/v1/shelves/1/tags", "bookstore.v1.ListBooksResponse",
                     R"({"nextPageToken":"t"})"),
            "[]");
}

TEST_F(transcoder_test, response_bytes_that_are_not_the_message_are_an_error) {
  for (auto path : {"/v1/shelves/1/books/2", "/v1/files/a"}) {
    auto m = t_->match("GET", path);
    ASSERT_TRUE(m);
    std::string json, error;
    EXPECT_FALSE(t_->response_to_json(*m, "\xff\xff\xff", &json, &error)) << path;
    EXPECT_FALSE(error.empty());
  }
}

TEST_F(transcoder_test, invalid_utf8_in_a_response_string_is_an_error_not_dropped) {
  auto m = t_->match("GET", "/v1/files/a");
  ASSERT_TRUE(m);
  std::string json, error;
  EXPECT_FALSE(t_->response_to_json(*m, std::string("\x0a\x01\xff", 3), &json, &error));
  EXPECT_NE(error.find("bookstore.v1.File.path is not valid UTF-8"), std::string::npos) << error;
  m = t_->match("GET", "/v1/shelves/1/books");
  ASSERT_TRUE(m);
  EXPECT_FALSE(t_->response_to_json(*m, std::string("\x0a\x03\x12\x01\xff", 5), &json, &error));
  EXPECT_NE(error.find("bookstore.v1.Book.title is not valid UTF-8"), std::string::npos) << error;
  EXPECT_FALSE(t_->response_to_json(*m, std::string("\x0a\x05\x12\x01", 4), &json, &error));
  EXPECT_NE(error.find("malformed"), std::string::npos) << error;
}

// --- load -------------------------------------------------------------------------------------

TEST(transcoder_load, a_missing_file_is_an_error_naming_it) {
  std::string error;
  EXPECT_EQ(transcoder::load("/nonexistent/bookstore.pb", {}, &error), nullptr);
  EXPECT_NE(error.find("/nonexistent/bookstore.pb"), std::string::npos) << error;
  EXPECT_NE(error.find("cannot open"), std::string::npos) << error;
  EXPECT_EQ(transcoder::load("/", {}, &error), nullptr);  // a directory: unreadable
  EXPECT_NE(error.find("cannot read"), std::string::npos) << error;
}

TEST(transcoder_load, garbage_bytes_are_not_a_descriptor_set) {
  for (std::string bytes :
       {std::string("\xff\xff\xff\xff", 4), std::string("hello, world"), std::string()}) {
    std::string error;
    EXPECT_EQ(transcoder::from_bytes(bytes, {}, "garbage.pb", &error), nullptr);
    EXPECT_NE(error.find("garbage.pb"), std::string::npos) << error;
    EXPECT_NE(error.find("not a protobuf FileDescriptorSet"), std::string::npos) << error;
  }
}

TEST(transcoder_load, an_unknown_service_is_an_error) {
  std::string error;
  EXPECT_EQ(transcoder::load(k_set_path, {"bookstore.v1.Library"}, &error), nullptr);
  EXPECT_NE(error.find("unknown service bookstore.v1.Library"), std::string::npos) << error;
  EXPECT_NE(error.find(k_set_path), std::string::npos) << error;
}

TEST(transcoder_load, a_named_service_without_annotations_is_an_error) {
  std::string error;
  EXPECT_EQ(transcoder::load(k_set_path, {"bookstore.v1.Admin"}, &error), nullptr);
  EXPECT_NE(error.find("no google.api.http annotations"), std::string::npos) << error;
}

TEST(transcoder_load, a_named_service_loads_from_bytes_as_from_the_file) {
  std::string error;
  auto t =
      transcoder::from_bytes(read_all(k_set_path), {"bookstore.v1.Bookstore"}, "bytes", &error);
  ASSERT_NE(t, nullptr) << error;
  auto m = t->match("GET", "/v1/shelves/1");
  ASSERT_TRUE(m);
  EXPECT_EQ(t->grpc_path(*m), "/bookstore.v1.Bookstore/GetShelf");
}

// Rewrites GetBook's google.api.http option to `rule` (HttpRule wire bytes) and loads the set.
std::string load_error_with_get_book_rule(const std::string& rule) {
  bookstore_types types;
  for (auto& file : *types.set().mutable_file()) {
    for (auto& service : *file.mutable_service()) {
      for (auto& method : *service.mutable_method()) {
        if (method.name() != "GetBook") continue;
        auto* unknown = method.mutable_options()->mutable_unknown_fields();
        unknown->Clear();
        unknown->AddLengthDelimited(72295728, rule);
      }
    }
  }
  std::string error;
  auto t = transcoder::from_bytes(types.set().SerializeAsString(), {}, "edited.pb", &error);
  EXPECT_EQ(t, nullptr);
  return error;
}

// HttpRule wire bytes: `get` (field 2) and optionally `body` (field 7).
std::string get_rule(const std::string& path, const std::string& body = "") {
  std::string out = "\x12" + std::string(1, static_cast<char>(path.size())) + path;
  if (!body.empty()) out += "\x3a" + std::string(1, static_cast<char>(body.size())) + body;
  return out;
}

TEST(transcoder_load, a_bad_path_template_is_an_error_naming_method_and_template) {
  for (const char* bad : {"/v1/shelves/{shelf", "v1/shelves", "/v1/**/books", "/v1/{a={b}}",
                          "/v1/shelves/", "/v1/x:", "/v1/{}"}) {
    std::string error = load_error_with_get_book_rule(get_rule(bad));
    EXPECT_NE(error.find("bookstore.v1.Bookstore.GetBook"), std::string::npos) << error;
    EXPECT_NE(error.find("path template"), std::string::npos) << bad << ": " << error;
  }
}

TEST(transcoder_load, a_variable_must_name_a_singular_scalar_field) {
  EXPECT_NE(load_error_with_get_book_rule(get_rule("/v1/{colour}")).find("no field colour"),
            std::string::npos);
  EXPECT_NE(load_error_with_get_book_rule(get_rule("/v1/{shelf.id}")).find("no field id"),
            std::string::npos);
  EXPECT_NE(load_error_with_get_book_rule(get_rule("/v1/{shelf}/{shelf}")).find("twice"),
            std::string::npos);
}

TEST(transcoder_load, a_body_naming_no_field_is_an_error) {
  std::string error = load_error_with_get_book_rule(get_rule("/v1/x", "colour"));
  EXPECT_NE(error.find("body \"colour\""), std::string::npos) << error;
}

TEST(transcoder_load, two_methods_on_one_route_are_an_error) {
  std::string error = load_error_with_get_book_rule(get_rule("/v1/shelves/{book}"));
  EXPECT_NE(error.find("bookstore.v1.Bookstore.GetShelf: GET /v1/shelves/{shelf} is already "
                       "bound to bookstore.v1.Bookstore.GetBook"),
            std::string::npos)
      << error;
}

TEST(transcoder_load, a_set_without_its_imports_is_an_error) {
  bookstore_types types;
  auto* files = types.set().mutable_file();
  files->erase(files->begin());  // google/protobuf/descriptor.proto, first in protoc's order
  std::string error;
  EXPECT_EQ(transcoder::from_bytes(types.set().SerializeAsString(), {}, "partial.pb", &error),
            nullptr);
  EXPECT_NE(error.find("--include_imports"), std::string::npos) << error;
}

}  // namespace
}  // namespace meridian::transcode
