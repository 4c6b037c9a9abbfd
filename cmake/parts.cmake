# One static library per part of src/ds (DESIGN: the layers and what each may use), and an include view per part
# that holds only the headers its layer may use: build/include/<part>/ds/<p> links to src/ds/<p> for the part itself
# and each part it depends on, directly or through another. A part compiles against its view alone, so including a
# header of a part it may not use fails with "No such file", at build time (a test below proves it).
#
#   ds_part(NAME [DEPS part...] [PRIVATE_LIBS lib...] [PUBLIC_LIBS lib...] [EXCLUDE regex...] [EXTRA file...])
# takes src/ds/NAME/**/*.cpp less the EXCLUDE matches, plus EXTRA (the CUDA sources of a CUDA build).
#
# Parts must be declared after their dependencies. `ds` stays the name of the whole library: an interface target
# linking every part, with the full include view, for the tool, the tests and the benchmarks.

set(DS_PARTS "" CACHE INTERNAL "")
set(DS_VIEWS_DIR ${CMAKE_BINARY_DIR}/include)

function(ds_part name)
  cmake_parse_arguments(P "" "" "DEPS;PRIVATE_LIBS;PUBLIC_LIBS;EXCLUDE;EXTRA" ${ARGN})
  # The closure of the dependencies, through each dependency's own closure.
  set(closure ${name})
  foreach(dep ${P_DEPS})
    if(NOT dep IN_LIST DS_PARTS)
      message(FATAL_ERROR "part ${name} depends on ${dep}, which is not declared before it")
    endif()
    get_property(dep_closure GLOBAL PROPERTY DS_PART_CLOSURE_${dep})
    list(APPEND closure ${dep_closure})
  endforeach()
  list(REMOVE_DUPLICATES closure)
  set_property(GLOBAL PROPERTY DS_PART_CLOSURE_${name} ${closure})

  file(GLOB_RECURSE srcs CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/src/ds/${name}/*.cpp)
  foreach(re ${P_EXCLUDE})
    list(FILTER srcs EXCLUDE REGEX "${re}")
  endforeach()
  list(APPEND srcs ${P_EXTRA})
  if(srcs)
    add_library(ds_${name} STATIC ${srcs})
    set(scope PUBLIC)
    set(iscope PRIVATE)
  else()
    add_library(ds_${name} INTERFACE)  # headers only
    set(scope INTERFACE)
    set(iscope INTERFACE)
  endif()
  ds_view(ds_${name} ${iscope} ${closure})
  foreach(dep ${P_DEPS})
    target_link_libraries(ds_${name} ${scope} ds_${dep})
  endforeach()
  if(P_PUBLIC_LIBS)
    target_link_libraries(ds_${name} ${scope} ${P_PUBLIC_LIBS})
  endif()
  if(P_PRIVATE_LIBS AND srcs)
    target_link_libraries(ds_${name} PRIVATE ${P_PRIVATE_LIBS})
  endif()
  if(srcs)
    ds_warnings(ds_${name})
  endif()
  set(DS_PARTS ${DS_PARTS} ${name} CACHE INTERNAL "")
endfunction()

# Gives `target` an include view of the parts listed (the view directory is named after the target).
function(ds_view target scope)
  set(view ${DS_VIEWS_DIR}/${target})
  file(REMOVE_RECURSE ${view})  # a dependency dropped since the last configure must disappear from the view
  file(MAKE_DIRECTORY ${view}/ds)
  foreach(p ${ARGN})
    file(CREATE_LINK ${CMAKE_SOURCE_DIR}/src/ds/${p} ${view}/ds/${p} SYMBOLIC)
  endforeach()
  target_include_directories(${target} ${scope} ${view})
endfunction()

# A probe for the layering test: `source` compiled alone (never part of `all`) against `part`'s include view.
function(ds_layering_probe target part source)
  get_property(closure GLOBAL PROPERTY DS_PART_CLOSURE_${part})
  add_library(${target} OBJECT EXCLUDE_FROM_ALL ${source})
  ds_view(${target} PRIVATE ${closure})
  target_link_libraries(${target} PRIVATE fmt::fmt nlohmann_json::nlohmann_json)
endfunction()
